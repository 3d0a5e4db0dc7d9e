"""Tests of pipeline.evaluation.figures: picture sizes and content, overlay colours, ordering."""

from __future__ import annotations

import math

import matplotlib.image as mpimg
import numpy as np
import pytest

from pipeline.evaluation.figures import (
    PANEL_INCHES,
    dice_bar_chart,
    dice_order,
    overlay_rgb,
    pick_lesion_slices,
    prediction_grid,
)


def _disc(shape: tuple[int, int], centre: tuple[int, int], radius: float) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return ((yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius**2).astype(np.uint8)


def _outline(mask: np.ndarray) -> np.ndarray:
    """Lesion pixels with a background 4-neighbour (independent of skimage), edges padded by copy."""
    m = np.pad(mask.astype(bool), 1, mode="edge")
    eroded = m[1:-1, 1:-1] & m[:-2, 1:-1] & m[2:, 1:-1] & m[1:-1, :-2] & m[1:-1, 2:]
    return mask.astype(bool) & ~eroded


def _sample(seed: int, size: int = 32) -> dict:
    rng = np.random.default_rng(seed)
    return {
        "image": rng.random((3, size, size)),
        "label": _disc((size, size), (14, 14), 6),
        "pred": _disc((size, size), (17, 16), 5)[None],
        "title": f"TCGA_CS_4941_19960909 slice {seed} Dice 0.7",
    }


def _read(path) -> np.ndarray:
    return mpimg.imread(path)


def test_overlay_is_gray_image_except_on_outlines():
    rng = np.random.default_rng(0)
    flair = rng.random((40, 40))
    label = _disc((40, 40), (15, 15), 7)
    pred = _disc((40, 40), (20, 19), 6)
    rgb = overlay_rgb(flair, label, pred)

    assert rgb.shape == (40, 40, 3)
    true_edge, pred_edge = _outline(label), _outline(pred)
    edges = true_edge | pred_edge
    assert true_edge.sum() > 10 and pred_edge.sum() > 10 and (true_edge & ~pred_edge).any()
    gray = np.repeat(flair[..., None], 3, axis=-1)
    np.testing.assert_array_equal(rgb[~edges], gray[~edges])
    np.testing.assert_array_equal(
        rgb[true_edge & ~pred_edge], np.tile([0.0, 1.0, 0.0], ((true_edge & ~pred_edge).sum(), 1))
    )
    np.testing.assert_array_equal(
        rgb[pred_edge & ~true_edge], np.tile([1.0, 0.0, 0.0], ((pred_edge & ~true_edge).sum(), 1))
    )
    np.testing.assert_array_equal(
        rgb[pred_edge & true_edge], np.tile([1.0, 1.0, 0.0], ((pred_edge & true_edge).sum(), 1))
    )


def test_overlay_of_empty_masks_is_plain_gray_and_accepts_channel_first_masks():
    flair = np.linspace(0, 1, 64).reshape(8, 8)
    empty = np.zeros((1, 8, 8))
    np.testing.assert_array_equal(overlay_rgb(flair, empty, empty), np.repeat(flair[..., None], 3, axis=-1))
    with pytest.raises(ValueError, match="label"):
        overlay_rgb(flair, np.zeros((9, 9)), empty)


def test_prediction_grid_size_and_content(tmp_path):
    samples = [_sample(i) for i in range(3)]
    out = prediction_grid(samples, tmp_path / "sub" / "grid.png", dpi=40)

    assert out == tmp_path / "sub" / "grid.png"
    assert [p.name for p in out.parent.iterdir()] == ["grid.png"]  # no temporary file left behind
    (out.parent / "plain.txt").write_text("x")  # the picture gets the mode of any new file, not 0600
    assert out.stat().st_mode == (out.parent / "plain.txt").stat().st_mode
    pixels = _read(out)
    assert pixels.shape[:2] == (round(3 * PANEL_INCHES * 40), round(4 * PANEL_INCHES * 40))
    assert pixels[..., :3].std() > 0.1
    # the overlay column holds pure green and red outline pixels; the other columns are gray
    rgb = pixels[..., :3]
    green = (rgb[..., 1] > 0.8) & (rgb[..., 0] < 0.2) & (rgb[..., 2] < 0.2)
    red = (rgb[..., 0] > 0.8) & (rgb[..., 1] < 0.2) & (rgb[..., 2] < 0.2)
    right_quarter = np.zeros_like(green)
    right_quarter[:, 3 * pixels.shape[1] // 4 :] = True
    assert green[right_quarter].sum() > 20 and red[right_quarter].sum() > 20
    assert not green[~right_quarter].any() and not red[~right_quarter].any()


def test_prediction_grid_respects_max_rows_and_rejects_bad_input(tmp_path):
    out = prediction_grid([_sample(i) for i in range(5)], tmp_path / "grid.png", max_rows=2, dpi=20)
    assert _read(out).shape[:2] == (round(2 * PANEL_INCHES * 20), round(4 * PANEL_INCHES * 20))
    with pytest.raises(ValueError, match="empty"):
        prediction_grid([], tmp_path / "none.png")
    with pytest.raises(ValueError, match="max_rows"):
        prediction_grid([_sample(0)], tmp_path / "none.png", max_rows=0)
    bad = _sample(0) | {"image": np.zeros((32, 32))}
    with pytest.raises(ValueError, match=r"samples\[0\]\['image'\]"):
        prediction_grid([bad], tmp_path / "none.png")
    assert not (tmp_path / "none.png").exists()


def test_dice_order_is_descending_without_nan_and_ties_by_patient():
    per_patient = {"p_a": 0.5, "p_b": 0.9, "p_c": math.nan, "p_d": 0.1, "p_e": 0.5}
    assert dice_order(per_patient) == ["p_b", "p_a", "p_e", "p_d"]


def test_dice_bar_chart_writes_picture_and_validates(tmp_path):
    per_patient = {f"TCGA_XX_{i:04d}_20000101": d for i, d in enumerate([0.8, 0.2, math.nan, 0.95, 0.6])}
    out = dice_bar_chart(per_patient, tmp_path / "dice.png", dpi=50)
    pixels = _read(out)
    assert pixels.shape[:2] == (round(4.5 * 50), round(6.0 * 50))
    assert pixels[..., :3].std() > 0.05
    only_nan = dice_bar_chart({"a": math.nan}, tmp_path / "nan.png", dpi=30)
    assert _read(only_nan)[..., :3].std() > 0.01
    with pytest.raises(ValueError, match="'b'.*1.5"):
        dice_bar_chart({"a": 0.5, "b": 1.5}, tmp_path / "bad.png")
    with pytest.raises(ValueError, match="empty"):
        dice_bar_chart({}, tmp_path / "bad.png")


def _has_colour(pixels: np.ndarray, rgb: tuple[float, float, float]) -> bool:
    return bool((np.abs(pixels[..., :3] - np.array(rgb)).max(axis=-1) < 0.02).any())


def test_dice_bar_chart_draws_lesion_free_patients_apart(tmp_path):
    tab_blue, tab_red = (0.122, 0.467, 0.706), (0.839, 0.153, 0.157)
    per_patient = {"p_a": 0.8, "p_b": 0.6, "healthy_1": 0.0, "healthy_2": math.nan}
    alone = _read(dice_bar_chart(per_patient, tmp_path / "alone.png", dpi=50))
    apart = _read(
        dice_bar_chart(per_patient, tmp_path / "apart.png", dpi=50, lesion_free_fp={"healthy_1": 31339})
    )
    assert apart.shape[1] > alone.shape[1]  # the lesion-free panel is added on the right
    right = apart[:, int(apart.shape[1] * 0.75) :]
    assert _has_colour(right, tab_red) and not _has_colour(right, tab_blue)  # false positives, no Dice bar
    silent = _read(
        dice_bar_chart(per_patient, tmp_path / "silent.png", dpi=50, lesion_free_fp={"healthy_2": 0})
    )
    assert not _has_colour(silent[:, int(silent.shape[1] * 0.75) :], tab_red)
    with pytest.raises(ValueError, match="'healthy_1'.*-1"):
        dice_bar_chart(per_patient, tmp_path / "bad.png", lesion_free_fp={"healthy_1": -1})


def test_pick_lesion_slices_spreads_over_patients_deterministically():
    empty, lesion = np.zeros((4, 4)), np.eye(4)
    # patient k has slices 10k..10k+9, lesions only in the odd ones
    labels = [lesion if i % 2 else empty for i in range(60)]
    patients = [f"p{i // 10}" for i in range(60)]

    picked = pick_lesion_slices(labels, patients, n=4, seed=3)
    assert picked == sorted(picked) and len(picked) == 4
    assert all(i % 2 for i in picked)
    assert len({patients[i] for i in picked}) == 4
    assert pick_lesion_slices(labels, patients, n=4, seed=3) == picked
    assert any(pick_lesion_slices(labels, patients, n=4, seed=s) != picked for s in range(4, 10))

    eight = pick_lesion_slices(labels, patients, n=8, seed=0)  # 6 patients: each gives 1 or 2
    counts = [sum(patients[i] == f"p{k}" for i in eight) for k in range(6)]
    assert sorted(counts) == [1, 1, 1, 1, 2, 2]
    assert pick_lesion_slices(labels, patients, n=100) == list(range(1, 60, 2))
    assert pick_lesion_slices([empty, lesion, empty], n=8) == [1]
    with pytest.raises(ValueError, match="n must"):
        pick_lesion_slices(labels, patients, n=0)
    with pytest.raises(ValueError, match="patients"):
        pick_lesion_slices(labels, patients[:3])
