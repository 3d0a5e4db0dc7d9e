"""Tests of pipeline.evaluation.metrics against hand computations on hand-made masks."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
import torch
from monai.metrics import compute_hausdorff_distance
from scipy import ndimage

from pipeline.evaluation import metrics
from pipeline.evaluation.volume_dice import VolumeDiceAccumulator, per_volume_dice


def _two_squares() -> tuple[np.ndarray, np.ndarray]:
    """Two 6x6 squares overlapping in a 4x3 rectangle (12 pixels)."""
    a = np.zeros((12, 12), dtype=bool)
    b = np.zeros((12, 12), dtype=bool)
    a[2:8, 2:8] = True  # rows 2..7, columns 2..7
    b[4:10, 5:11] = True  # rows 4..9, columns 5..10
    return a, b


def _brute_hd95(pred: np.ndarray, truth: np.ndarray) -> float:
    """HD95 written out: boundary by explicit neighbour checks, all pairwise distances."""

    def boundary_points(mask: np.ndarray) -> np.ndarray:
        points = []
        for index in zip(*np.nonzero(mask)):
            for axis, step in itertools.product(range(mask.ndim), (-1, 1)):
                neighbour = list(index)
                neighbour[axis] += step
                outside = not 0 <= neighbour[axis] < mask.shape[axis]
                if outside or not mask[tuple(neighbour)]:
                    points.append(index)
                    break
        return np.array(points, dtype=float)

    bp, bt = boundary_points(pred), boundary_points(truth)
    distances = np.sqrt(((bp[:, None, :] - bt[None, :, :]) ** 2).sum(axis=-1))
    return max(np.percentile(distances.min(axis=1), 95), np.percentile(distances.min(axis=0), 95))


def test_dice_and_iou_of_overlapping_squares() -> None:
    a, b = _two_squares()
    assert a.sum() == 36 and b.sum() == 36 and (a & b).sum() == 12
    assert metrics.dice(a, b) == pytest.approx(2 * 12 / (36 + 36), abs=1e-6)  # 1/3
    assert metrics.iou(a, b) == pytest.approx(12 / (36 + 36 - 12), abs=1e-6)  # 0.2
    assert metrics.dice(a.astype(np.uint8), b.astype(np.float32)) == pytest.approx(1 / 3, abs=1e-6)
    assert metrics.dice(a, a) == 1.0 and metrics.iou(a, a) == 1.0


def test_dice_and_iou_in_3d() -> None:
    a = np.zeros((3, 4, 4), dtype=bool)
    b = np.zeros((3, 4, 4), dtype=bool)
    a[0:2, 0:2, 0:2] = True  # 8 voxels
    b[1:3, 0:2, 0:2] = True  # 8 voxels, 4 shared (slice 1)
    assert metrics.dice(a, b) == pytest.approx(8 / 16, abs=1e-6)
    assert metrics.iou(a, b) == pytest.approx(4 / 12, abs=1e-6)


def test_empty_masks() -> None:
    empty = np.zeros((5, 5), dtype=bool)
    full = np.ones((5, 5), dtype=bool)
    assert math.isnan(metrics.dice(empty, empty))
    assert math.isnan(metrics.iou(empty, empty))
    assert metrics.dice(full, empty) == 0.0 and metrics.dice(empty, full) == 0.0
    assert metrics.iou(full, empty) == 0.0 and metrics.iou(empty, full) == 0.0


def test_shape_mismatch() -> None:
    with pytest.raises(ValueError, match=r"same shape.*\(2, 2\).*\(3, 3\)"):
        metrics.dice(np.ones((2, 2)), np.ones((3, 3)))


def test_per_slice_bce_by_hand() -> None:
    prob = np.array([[0.9, 0.2], [0.6, 0.0]])
    truth = np.array([[1, 0], [0, 1]])
    eps = 1e-7
    expected = -(math.log(0.9) + math.log(1 - 0.2) + math.log(1 - 0.6) + math.log(eps)) / 4
    assert metrics.per_slice_bce(prob, truth) == pytest.approx(expected, abs=1e-6)
    assert metrics.per_slice_bce(np.array([1.0, 0.0]), np.array([1, 0])) == pytest.approx(
        -math.log(1 - eps), abs=1e-6
    )


def test_hd95_of_shifted_square() -> None:
    a = np.zeros((20, 20), dtype=bool)
    a[4:14, 4:14] = True
    b = np.roll(a, 3, axis=1)
    assert metrics.hd95(a, b) == pytest.approx(3.0, abs=1e-6)
    assert metrics.hd95(a, a) == 0.0


def test_hd95_of_single_points() -> None:
    p = np.zeros((8, 8), dtype=bool)
    t = np.zeros((8, 8), dtype=bool)
    p[0, 0] = True
    t[3, 4] = True
    assert metrics.hd95(p, t) == pytest.approx(5.0, abs=1e-6)
    assert metrics.hd95(p, t, spacing=(2.0, 1.0)) == pytest.approx(math.sqrt(6**2 + 4**2), abs=1e-6)
    p3 = np.zeros((3, 4, 4), dtype=bool)
    t3 = np.zeros((3, 4, 4), dtype=bool)
    p3[0, 0, 0] = True
    t3[1, 2, 2] = True
    assert metrics.hd95(p3, t3) == pytest.approx(3.0, abs=1e-6)


def test_hd95_empty() -> None:
    empty = np.zeros((6, 6), dtype=bool)
    some = empty.copy()
    some[2, 2] = True
    assert math.isnan(metrics.hd95(empty, empty))
    assert metrics.hd95(some, empty) == math.inf
    assert metrics.hd95(empty, some) == math.inf


@pytest.mark.filterwarnings("ignore:.*always_return_as_numpy.*")
@pytest.mark.parametrize("shape", [(16, 16), (5, 9, 9)])
def test_hd95_matches_brute_force_and_monai(shape: tuple[int, ...]) -> None:
    rng = np.random.default_rng(3)
    for _ in range(3):
        pred = rng.random(shape) > 0.7
        truth = rng.random(shape) > 0.6
        ours = metrics.hd95(pred, truth)
        assert ours == pytest.approx(_brute_hd95(pred, truth), abs=1e-6)
        monai = compute_hausdorff_distance(
            torch.from_numpy(pred)[None, None].float(),
            torch.from_numpy(truth)[None, None].float(),
            include_background=True,
            percentile=95,
        )
        assert ours == pytest.approx(float(monai.item()), abs=1e-4)


def test_largest_component_keeps_the_blob_joined_across_slices() -> None:
    volume = np.zeros((4, 10, 10), dtype=np.uint8)
    volume[0, 1:3, 1:3] = 1  # 4 voxels on slice 0 ...
    volume[1, 1:3, 1:3] = 1  # ... joined through the slice face to 4 more: 8 voxels in all
    volume[3, 5:8, 5:7] = 1  # a separate blob of 6 voxels, larger than either 2-D part
    kept = metrics.largest_component(volume)
    expected = np.zeros_like(volume, dtype=bool)
    expected[0:2, 1:3, 1:3] = True
    assert kept.dtype == bool
    np.testing.assert_array_equal(kept, expected)


def test_largest_component_connectivity() -> None:
    volume = np.zeros((3, 6, 6), dtype=bool)
    volume[0, 0, 0] = volume[1, 1, 1] = volume[2, 2, 2] = True  # a chain touching only at corners
    volume[0, 4:6, 4] = True  # two face-connected voxels
    six = metrics.largest_component(volume)
    assert six.sum() == 2 and six[0, 4:6, 4].all()
    twenty_six = metrics.largest_component(volume, connectivity=3)
    assert twenty_six.sum() == 3 and twenty_six[2, 2, 2]


def test_largest_component_empty_and_tie() -> None:
    empty = np.zeros((2, 4, 4), dtype=bool)
    np.testing.assert_array_equal(metrics.largest_component(empty), empty)
    tie = np.zeros((1, 4, 4), dtype=bool)
    tie[0, 0, 0] = tie[0, 3, 3] = True
    kept = metrics.largest_component(tie)
    assert kept.sum() == 1 and kept[0, 0, 0]
    with pytest.raises(ValueError, match="connectivity"):
        metrics.largest_component(tie, connectivity=4)


def test_volume_metrics() -> None:
    a, b = _two_squares()
    pred, truth = np.stack([a, a]), np.stack([b, np.zeros_like(b)])
    result = metrics.volume_metrics(pred, truth)
    assert result["dice"] == pytest.approx(2 * 12 / (72 + 36), abs=1e-6)
    assert result["iou"] == pytest.approx(12 / (72 + 36 - 12), abs=1e-6)
    assert result["hd95"] == pytest.approx(_brute_hd95(pred, truth), abs=1e-6)
    assert (result["pred_voxels"], result["true_voxels"], result["empty"]) == (72, 36, False)
    empty = metrics.volume_metrics(np.zeros((2, 3, 3)), np.zeros((2, 3, 3)))
    assert empty["empty"] is True and math.isnan(empty["dice"]) and math.isnan(empty["hd95"])


def test_summarize_with_nan_and_inf() -> None:
    summary = metrics.summarize([1.0, float("nan"), 3.0, float("inf"), 2.0, 6.0])
    assert summary == {
        "mean": pytest.approx((1 + 3 + 2 + 6) / 4, abs=1e-6),
        "median": pytest.approx((2 + 3) / 2, abs=1e-6),
        "count": 4,
        "n_undefined": 1,
        "n_infinite": 1,
        "n_total": 6,
    }
    assert all(type(summary[k]) is int for k in ("count", "n_undefined", "n_infinite", "n_total"))
    undefined = metrics.summarize(np.array([np.nan, np.nan]))
    assert undefined["mean"] is None and undefined["median"] is None and undefined["n_undefined"] == 2
    json.dumps([summary, undefined, metrics.summarize([])], allow_nan=False, sort_keys=True)


def _patients(rng: np.random.Generator) -> dict[str, list[tuple[np.ndarray, np.ndarray]]]:
    def slices(n: int, p: float, q: float) -> list[tuple[np.ndarray, np.ndarray]]:
        return [(rng.random((6, 6)) < p, rng.random((6, 6)) < q) for _ in range(n)]

    return {"TCGA_A": slices(4, 0.3, 0.2), "TCGA_B": slices(3, 0.1, 0.4), "TCGA_C": slices(2, 0.0, 0.0)}


def _stacked_dice(pairs: list[tuple[np.ndarray, np.ndarray]]) -> float:
    pred = np.stack([p for p, _ in pairs])
    truth = np.stack([t for _, t in pairs])
    denominator = pred.sum() + truth.sum()
    return float("nan") if denominator == 0 else 2 * np.logical_and(pred, truth).sum() / denominator


def test_accumulator_equals_dice_of_stacked_volume() -> None:
    patients = _patients(np.random.default_rng(0))
    accumulator = VolumeDiceAccumulator()
    for patient, pairs in patients.items():
        for index in reversed(range(len(pairs))):  # order of arrival does not matter
            accumulator.add(patient, index + 1, *pairs[index])
    result = accumulator.result()
    assert sorted(result) == sorted(patients)
    for patient, pairs in patients.items():
        expected = _stacked_dice(pairs)
        if math.isnan(expected):
            assert math.isnan(result[patient])
        else:
            assert result[patient] == pytest.approx(expected, abs=1e-6)
    defined = [_stacked_dice(pairs) for patient, pairs in patients.items() if patient != "TCGA_C"]
    assert accumulator.mean() == pytest.approx(sum(defined) / len(defined), abs=1e-6)
    records = [(p, i, *pair) for p, pairs in patients.items() for i, pair in enumerate(pairs)]
    assert per_volume_dice(records) == pytest.approx(result, nan_ok=True)


def test_accumulator_counts_and_merge_of_two_halves() -> None:
    patients = _patients(np.random.default_rng(1))
    records = [(p, i, *pair) for p, pairs in patients.items() for i, pair in enumerate(pairs)]
    whole = VolumeDiceAccumulator()
    first, second = VolumeDiceAccumulator(), VolumeDiceAccumulator()
    for k, (patient, index, pred, truth) in enumerate(records):
        whole.add(patient, index, pred, truth)
        counts = (int((pred & truth).sum()), int(pred.sum()), int(truth.sum()))
        (first if k % 2 else second).add_counts(patient, index, *counts)
    merged = VolumeDiceAccumulator()
    merged.merge(first.state())
    merged.merge(second.state())
    assert merged.state() == whole.state()
    assert merged.result() == pytest.approx(whole.result(), nan_ok=True)
    assert merged.mean() == pytest.approx(whole.mean(), abs=1e-12)


def test_accumulator_rejects_a_slice_counted_twice() -> None:
    accumulator = VolumeDiceAccumulator()
    accumulator.add_counts("TCGA_A", 3, 1, 2, 2)
    with pytest.raises(ValueError, match="TCGA_A slice 3"):
        accumulator.add("TCGA_A", 3, np.ones((2, 2)), np.ones((2, 2)))
    other = VolumeDiceAccumulator()
    other.add_counts("TCGA_B", 1, 0, 0, 0)
    other.add_counts("TCGA_A", 3, 0, 0, 0)
    with pytest.raises(ValueError, match="TCGA_A slice 3"):
        accumulator.merge(other.state())
    assert accumulator.state() == {"TCGA_A": {3: (1, 2, 2)}}  # a failed merge changes nothing
    with pytest.raises(ValueError, match="impossible counts"):
        accumulator.add_counts("TCGA_A", 4, 3, 2, 5)
    with pytest.raises(ValueError, match="counted twice"):
        per_volume_dice([("P", 1, np.ones(2), np.ones(2)), ("P", 1, np.ones(2), np.ones(2))])


def test_accumulator_mean_without_defined_dice() -> None:
    accumulator = VolumeDiceAccumulator()
    assert math.isnan(accumulator.mean())
    accumulator.add_counts("TCGA_A", 1, 0, 0, 0)
    assert math.isnan(accumulator.result()["TCGA_A"])
    assert math.isnan(accumulator.mean())


def test_remove_small_components_by_hand() -> None:
    volume = np.zeros((3, 8, 8), bool)
    volume[0:3, 0:3, 0:3] = True  # 27 voxels, joined across the three slices
    volume[1, 6, 6] = True  # 1 voxel
    volume[2, 6:8, 4:6] = True  # 4 voxels
    kept = metrics.remove_small_components(volume, 4)
    expected = volume.copy()
    expected[1, 6, 6] = False
    np.testing.assert_array_equal(kept, expected)
    assert metrics.remove_small_components(volume, 28).sum() == 0
    assert metrics.remove_small_components(np.zeros((2, 4, 4)), 1).sum() == 0
    # the same as keeping the labels of scipy whose size reaches the bound (diagonals do not join)
    rng = np.random.default_rng(4)
    random = rng.random((4, 16, 16)) > 0.7
    labels, _ = ndimage.label(random)
    sizes = np.bincount(labels.ravel())
    reference = np.isin(labels, [i for i in range(1, sizes.size) if sizes[i] >= 5])
    np.testing.assert_array_equal(metrics.remove_small_components(random, 5), reference)
