"""Sampling weights of the recipe, checked against numbers worked out by hand."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import tifffile

from pipeline.data.weights import lesion_weights, mask_areas
from transforms import TiffReadError


def test_hand_worked_example():
    # areas [0, 10, 30]: S = 40, n = 3, floor 0.1 * 40 / 3 = 4/3, denominator 1.1 * 40 = 44
    w = lesion_weights([0, 10, 30])
    expected = np.array([(0 + 4 / 3) / 44, (10 + 4 / 3) / 44, (30 + 4 / 3) / 44])
    np.testing.assert_allclose(w, expected, rtol=1e-12)
    np.testing.assert_allclose(w, [0.030303030303, 0.257575757576, 0.712121212121], atol=1e-12)
    assert w.sum() == pytest.approx(1.0, abs=1e-12)


def test_weights_follow_the_formula_and_sum_to_one():
    areas = np.random.default_rng(0).integers(0, 500, size=257).astype(float)
    areas[::3] = 0
    s, n = areas.sum(), areas.size
    w = lesion_weights(areas)
    np.testing.assert_allclose(w, [(a + 0.1 * s / n) / (1.1 * s) for a in areas], rtol=1e-12)
    assert w.sum() == pytest.approx(1.0, abs=1e-12)
    # larger lesion, larger weight; lesion-free slices keep the floor 0.1 / (1.1 n)
    assert np.all(np.diff(w[np.argsort(areas, kind="stable")]) >= 0)
    np.testing.assert_allclose(w[areas == 0], 0.1 / (1.1 * n))


def test_a_larger_floor_gives_lesion_free_slices_their_share():
    # areas [0, 0, 20]: S = 20, n = 3; floor 1: each slice gets 20/3, denominator 2 * 20 = 40
    w = lesion_weights([0, 0, 20], floor=1.0)
    np.testing.assert_allclose(w, [(20 / 3) / 40, (20 / 3) / 40, (20 + 20 / 3) / 40], rtol=1e-12)
    # the two lesion-free slices: 1/3 of the draws, against 2 * (2/3) / 22 = 6% with the tutorial's 0.1
    assert w[:2].sum() == pytest.approx(1 / 3)
    assert lesion_weights([0, 0, 20])[:2].sum() == pytest.approx(2 * (0.1 * 20 / 3) / 22)
    for bad in (0, -1, float("nan"), True):
        with pytest.raises(ValueError, match="sampling floor must be a number > 0"):
            lesion_weights([0, 1], floor=bad)


def test_single_slice_gets_weight_one():
    np.testing.assert_allclose(lesion_weights(np.array([12.0])), [1.0])


def test_no_lesion_anywhere_is_uniform_and_warns(caplog):
    with caplog.at_level(logging.WARNING, logger="pipeline.data.weights"):
        w = lesion_weights([0, 0, 0, 0])
    np.testing.assert_array_equal(w, [0.25, 0.25, 0.25, 0.25])
    assert "No slice has a lesion" in caplog.text


@pytest.mark.parametrize(
    ("areas", "message"),
    [
        ([], "empty"),
        ([1.0, 2.0, -3.0, 4.0], r"areas\[2\]"),
        ([1.0, float("nan")], r"areas\[1\]"),
        ([[1.0, 2.0]], "one-dimensional"),
    ],
)
def test_bad_areas_raise(areas, message):
    with pytest.raises(ValueError, match=message):
        lesion_weights(areas)


def test_mask_areas_counts_nonzero_pixels(tmp_path):
    masks = [np.zeros((16, 20), np.uint8) for _ in range(3)]
    masks[1][2:5, 3:7] = 255  # 3 x 4 = 12
    masks[2][0, :] = 255  # 20
    masks[2][15, 19] = 255  # + 1
    paths = []
    for i, mask in enumerate(masks):
        paths.append(tmp_path / f"TCGA_CS_4941_19960909_{i + 1}_mask.tif")
        tifffile.imwrite(paths[-1], mask, photometric="minisblack")
    areas = mask_areas(paths)
    np.testing.assert_array_equal(areas, [0, 12, 21])
    assert areas.dtype == np.int64
    np.testing.assert_allclose(lesion_weights(areas).sum(), 1.0)


def test_mask_areas_names_an_unreadable_file(tmp_path):
    good, bad = tmp_path / "a_1_mask.tif", tmp_path / "a_2_mask.tif"
    tifffile.imwrite(good, np.zeros((4, 4), np.uint8))
    bad.write_text("not a tiff")
    with pytest.raises(TiffReadError, match="a_2_mask.tif"):
        mask_areas([good, bad])
    with pytest.raises(ValueError, match="missing_mask.tif"):
        mask_areas([tmp_path / "missing_mask.tif"])
