"""pipeline.evaluation.detection against hand-worked volumes and scipy.ndimage.label computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage

from pipeline.evaluation import detection


def _hand_patient() -> tuple[np.ndarray, np.ndarray]:
    """4 slices of 8x8: a lesion on slices 1-2, a prediction that overlaps it plus two false blobs.

    truth: slices 1 and 2, rows 2-4, columns 2-4 (2 * 9 = 18 voxels); slices 0 and 3 lesion-free.
    pred:  slices 1 and 2, rows 2-4, columns 3-5 (18 voxels, 12 of them in the truth, 6 outside);
           slice 0, rows 6-7, columns 6-7 (4 voxels) and slice 3, row 0, columns 0-2 (3 voxels).
    """
    truth = np.zeros((4, 8, 8), dtype=bool)
    truth[1:3, 2:5, 2:5] = True
    pred = np.zeros_like(truth)
    pred[1:3, 2:5, 3:6] = True
    pred[0, 6:8, 6:8] = True
    pred[3, 0, 0:3] = True
    return pred, truth


def test_hand_worked_patient() -> None:
    pred, truth = _hand_patient()
    record = detection.volume_detection(pred, truth, min_component_voxels=10)
    assert record["has_lesion"] is True
    assert record["largest_component_voxels"] == 18
    assert record["detected"] is True
    assert record["fp_voxels"] == 6 + 4 + 3
    assert record["fp_voxels_lesion_free_slices"] == 4 + 3  # the overlap's 6 lie on lesion slices
    assert record["lesion_free_slices"] == 2
    assert record["fp_aware_dice"] == pytest.approx(2 * 12 / (25 + 18))  # a lesion patient: its Dice
    assert "fp_ml" not in record
    # an 18-voxel blob is not enough when 19 are asked for
    assert detection.volume_detection(pred, truth, min_component_voxels=19)["detected"] is False


def test_volumes_in_ml_from_the_voxel_size() -> None:
    pred, truth = _hand_patient()
    per_voxel = detection.voxel_volume_ml([3.0, 0.5, 0.5])
    assert per_voxel == pytest.approx(0.00075)  # 3 * 0.5 * 0.5 mm^3 = 0.75 mm^3
    record = detection.volume_detection(pred, truth, voxel_volume_ml=per_voxel)
    assert record["fp_ml"] == pytest.approx(13 * 0.00075)
    assert record["fp_ml_lesion_free_slices"] == pytest.approx(7 * 0.00075)
    assert detection.voxel_volume_ml(None) is None
    for bad in ([1.0, 1.0], [1.0, 0.0, 1.0], [1.0, math.nan, 1.0]):
        with pytest.raises(ValueError, match="voxel_spacing_mm"):
            detection.voxel_volume_ml(bad)


def test_a_component_is_counted_in_3d_across_slices() -> None:
    truth = np.zeros((3, 6, 6), dtype=bool)
    pred = np.zeros_like(truth)
    pred[:, 1:3, 1:3] = True  # 4 voxels a slice, 12 joined through the slices
    record = detection.volume_detection(pred, truth, min_component_voxels=10)
    assert record["largest_component_voxels"] == 12 and record["detected"] is True
    assert record["has_lesion"] is False and record["fp_aware_dice"] == 0.0
    # shifted on every slice, the blobs touch only at corners: no face neighbour, 3 components
    shifted = np.zeros_like(pred)
    for z in range(3):
        shifted[z, 2 * z : 2 * z + 2, 2 * z : 2 * z + 2] = True
    assert detection.volume_detection(shifted, truth, min_component_voxels=10)["detected"] is False
    assert list(detection.component_sizes(shifted)) == [4, 4, 4]


def test_connectivity_of_components() -> None:
    mask = np.zeros((2, 3, 3), dtype=bool)
    mask[0, 0, 0] = mask[1, 1, 1] = True  # corner neighbours only
    assert list(detection.component_sizes(mask, connectivity=1)) == [1, 1]
    assert list(detection.component_sizes(mask, connectivity=3)) == [2]
    assert detection.component_sizes(np.zeros((2, 3, 3))).size == 0
    with pytest.raises(ValueError, match="connectivity"):
        detection.component_sizes(mask, connectivity=4)


@pytest.mark.parametrize("seed", range(5))
def test_random_volumes_match_scipy_label(seed: int) -> None:
    rng = np.random.default_rng(seed)
    pred = rng.random((5, 12, 12)) < 0.25
    truth = np.zeros_like(pred)
    truth[2:4] = rng.random((2, 12, 12)) < 0.4
    labels, n = ndimage.label(pred)  # scipy's default structure: face connectivity
    sizes = sorted((int(np.sum(labels == k)) for k in range(1, n + 1)), reverse=True)
    assert list(detection.component_sizes(pred)) == sizes
    for k in (1, 5, sizes[0], sizes[0] + 1):
        record = detection.volume_detection(pred, truth, min_component_voxels=k)
        assert record["detected"] == any(s >= k for s in sizes)
        assert record["largest_component_voxels"] == sizes[0]
    assert record["fp_voxels"] == int(np.sum(pred & ~truth))
    free = [z for z in range(5) if not truth[z].any()]
    assert record["lesion_free_slices"] == len(free)
    assert record["fp_voxels_lesion_free_slices"] == int(sum(pred[z].sum() for z in free))


def test_lesion_free_patient_scores_one_only_when_not_detected() -> None:
    truth = np.zeros((2, 5, 5), dtype=bool)
    pred = np.zeros_like(truth)
    assert detection.volume_detection(pred, truth)["fp_aware_dice"] == 1.0  # nothing predicted
    pred[0, 0, 0:3] = True  # a 3-voxel speck, below the default 10
    speck = detection.volume_detection(pred, truth)
    assert speck["detected"] is False and speck["fp_aware_dice"] == 1.0 and speck["fp_voxels"] == 3
    assert detection.volume_detection(pred, truth, min_component_voxels=3)["fp_aware_dice"] == 0.0
    assert detection.fp_aware_dice(0.7, has_lesion=True, detected=False) == 0.7


def test_min_component_voxels_is_checked() -> None:
    for bad in (0, -3, 2.5, True, "10"):
        with pytest.raises(ValueError, match="min_component_voxels"):
            detection.check_min_component_voxels(bad)
    assert detection.check_min_component_voxels(np.int64(4)) == 4
    with pytest.raises(ValueError, match="slices, H, W"):
        detection.volume_detection(np.zeros((4, 4)), np.zeros((4, 4)))


def _record(dice: float, has_lesion: bool, detected: bool, fp: int, fp_free_slices: int) -> dict:
    return {
        "dice": dice,
        "has_lesion": has_lesion,
        "detected": detected,
        "fp_voxels": fp,
        "fp_voxels_lesion_free_slices": fp_free_slices,
        "fp_aware_dice": detection.fp_aware_dice(dice, has_lesion, detected),
    }


def test_aggregates_by_hand() -> None:
    records = [
        _record(0.9, True, True, 10, 2),
        _record(0.5, True, True, 30, 0),
        _record(0.0, True, False, 0, 0),  # a missed lesion
        _record(0.0, False, True, 400, 400),  # painted on a healthy brain
        _record(math.nan, False, False, 0, 0),  # silent on a healthy brain
        _record(0.0, False, False, 5, 5),  # a speck below the detection size
    ]
    out = detection.detection_aggregates(records)
    assert out["sensitivity"] == pytest.approx(2 / 3)
    assert out["specificity"] == pytest.approx(2 / 3)
    assert out["detection"] == {
        "true_positive": 2,
        "false_negative": 1,
        "true_negative": 2,
        "false_positive": 1,
    }
    assert out["lesion_dice"]["mean"] == pytest.approx((0.9 + 0.5 + 0.0) / 3)
    assert out["lesion_dice"]["count"] == 3
    assert out["fp_aware_dice"]["mean"] == pytest.approx((0.9 + 0.5 + 0.0 + 0.0 + 1.0 + 1.0) / 6)
    assert out["fp_voxels_lesion_free"] == {
        "mean": 135.0,
        "median": 5.0,
        "max": 400.0,
        "total": 405.0,
        "count": 3,
    }
    assert out["fp_voxels_lesion_free_slices"]["total"] == 407.0
    assert out["fp_voxels_lesion_free_slices"]["count"] == 6
    assert "fp_ml_lesion_free" not in out


def test_aggregates_without_lesion_free_patients_leave_specificity_undefined() -> None:
    out = detection.detection_aggregates([_record(0.8, True, True, 3, 0), _record(0.6, True, False, 0, 0)])
    assert out["specificity"] is None and out["sensitivity"] == 0.5
    assert out["fp_voxels_lesion_free"] == {
        "mean": None,
        "median": None,
        "max": None,
        "total": None,
        "count": 0,
    }
    # without lesion-free patients the selection score is the per-volume Dice
    assert out["fp_aware_dice"]["mean"] == pytest.approx(0.7) == out["lesion_dice"]["mean"]
    assert detection.detection_aggregates([_record(math.nan, False, False, 0, 0)])["sensitivity"] is None


@pytest.mark.parametrize("connectivity", [1, 2, 3])
def test_component_sizes_equal_scipys_labelling_of_the_whole_volume(connectivity):
    """Labelled within the mask's bounding box, the sizes are those of labelling the whole volume."""
    rng = np.random.default_rng(connectivity)
    for _ in range(100):
        mask = np.zeros((rng.integers(1, 10), rng.integers(1, 25), rng.integers(1, 25)), dtype=bool)
        for _ in range(rng.integers(1, 5)):
            z, y, x = (rng.integers(0, s) for s in mask.shape)
            mask[z : z + rng.integers(1, 4), y : y + rng.integers(1, 6), x : x + rng.integers(1, 6)] = True
        labels, _ = ndimage.label(mask, structure=ndimage.generate_binary_structure(3, connectivity))
        expected = np.sort(np.bincount(labels.ravel())[1:])[::-1]
        np.testing.assert_array_equal(detection.component_sizes(mask, connectivity), expected)
