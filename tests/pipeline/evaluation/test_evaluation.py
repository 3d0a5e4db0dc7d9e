"""evaluate_volumes and FlipTTAInferer against hand-made volumes and independent numpy maths."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import ndimage

from pipeline.evaluation.tta import FlipTTAInferer
from pipeline.evaluation.volume_evaluation import VARIANTS, evaluate_volumes


def _slices(prob: np.ndarray, truth: np.ndarray, prob_tta: np.ndarray | None = None) -> dict[int, dict]:
    prob_tta = prob if prob_tta is None else prob_tta
    return {
        z + 1: {
            "prob": prob[z],
            "prob_tta": prob_tta[z],
            "truth": truth[z],
            "image_file": f"img_{z + 1}.tif",
            "label_file": f"img_{z + 1}_mask.tif",
        }
        for z in range(prob.shape[0])
    }


def _numpy_dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(bool), b.astype(bool)
    total = a.sum() + b.sum()
    return float("nan") if total == 0 else 2.0 * (a & b).sum() / total


def test_per_volume_metrics_and_largest_component_match_numpy():
    truth = np.zeros((4, 10, 10), bool)
    truth[1:3, 2:6, 2:6] = True  # 32 voxels
    prob = np.zeros((4, 10, 10), np.float32)
    prob[1:3, 3:7, 2:6] = 0.9  # shifted by one row: overlap 2*3*4 = 24
    prob[0, 8:10, 8:10] = 0.8  # a separate small false positive (4 voxels)
    prob[2, 0, 0] = 0.4  # below threshold
    slices = {"P1": _slices(prob, truth), "P2": _slices(np.zeros_like(prob), np.zeros_like(truth))}
    summary, rows = evaluate_volumes(slices, threshold=0.5)

    pred = prob > 0.5
    labels, n = ndimage.label(pred)
    sizes = ndimage.sum(pred, labels, range(1, n + 1))
    lcc = labels == (1 + int(np.argmax(sizes)))
    case = {c["patient"]: c for c in summary["cases"]}
    p1 = case["P1"]["metrics"]
    assert math.isclose(p1["threshold"]["dice"], 2 * 24 / (32 + 36), abs_tol=1e-6)
    assert math.isclose(p1["threshold"]["dice"], _numpy_dice(pred, truth), abs_tol=1e-6)
    assert math.isclose(p1["threshold+lcc"]["dice"], 2 * 24 / (32 + 32), abs_tol=1e-6)
    assert math.isclose(p1["threshold+lcc"]["dice"], _numpy_dice(lcc, truth), abs_tol=1e-6)
    assert math.isclose(p1["threshold"]["iou"], 24 / (32 + 36 - 24), abs_tol=1e-6)
    assert p1["threshold"]["pred_voxels"] == 36 and p1["threshold"]["true_voxels"] == 32
    assert p1["threshold+lcc"]["pred_voxels"] == 32
    # both empty: undefined, counted separately, not in the mean
    assert case["P2"]["metrics"]["threshold"]["dice"] is None
    dice = summary["aggregates"]["threshold"]["dice"]
    assert dice["n_undefined"] == 1 and dice["count"] == 1
    assert math.isclose(dice["mean"], 2 * 24 / 68, abs_tol=1e-6)
    # per-slice rows in slice order, Dice per slice from numpy
    p1_rows = [r for r in rows if r["patient"] == "P1"]
    assert [r["slice"] for r in p1_rows] == [1, 2, 3, 4]
    for z, row in enumerate(p1_rows):
        expected = _numpy_dice(pred[z], truth[z])
        assert (row["threshold_dice"] == "") == math.isnan(expected)
        if not math.isnan(expected):
            assert math.isclose(float(row["threshold_dice"]), expected, abs_tol=1e-6)
    assert case["P1"]["images"][0] == "img_1.tif"
    assert set(summary["aggregates"]) == set(VARIANTS)


def test_false_positives_and_detection_in_the_summary():
    truth = np.zeros((3, 10, 10), bool)
    truth[1, 2:6, 2:6] = True  # 16 voxels on slice 1
    prob = np.zeros((3, 10, 10), np.float32)
    prob[1, 2:6, 2:6] = 0.9  # found exactly
    prob[0, 7:10, 7:10] = 0.8  # 9 false-positive voxels on a lesion-free slice: below 10, a speck
    healthy = np.zeros((3, 10, 10), np.float32)
    healthy[0:3, 0:2, 0:2] = 0.7  # 12 voxels through the slices of a lesion-free patient: a call
    slices = {
        "LESION": _slices(prob, truth),
        "HEALTHY": _slices(healthy, np.zeros_like(truth)),
        "SILENT": _slices(np.zeros_like(prob), np.zeros_like(truth)),
    }
    summary, _ = evaluate_volumes(slices, threshold=0.5, min_component_voxels=10)
    case = {c["patient"]: c["metrics"]["threshold"] for c in summary["cases"]}
    assert case["LESION"]["fp_voxels"] == 9 and case["LESION"]["fp_voxels_lesion_free_slices"] == 9
    assert case["LESION"]["detected"] is True and case["LESION"]["has_lesion"] is True
    assert case["HEALTHY"]["detected"] is True and case["HEALTHY"]["fp_voxels"] == 12
    assert case["SILENT"]["detected"] is False and case["SILENT"]["fp_voxels"] == 0
    assert case["HEALTHY"]["fp_aware_dice"] == 0.0 and case["SILENT"]["fp_aware_dice"] == 1.0
    # largest component per patient, then detection: LESION keeps its 16, loses the 9-voxel speck
    assert summary["cases"][1]["metrics"]["threshold+lcc"]["fp_voxels"] == 0  # sorted: HEALTHY, LESION
    # small components dropped: LESION loses the 9-voxel speck (Dice 1), HEALTHY keeps its 12
    mcs = {c["patient"]: c["metrics"]["threshold+mcs"] for c in summary["cases"]}
    assert mcs["LESION"]["fp_voxels"] == 0 and mcs["LESION"]["dice"] == pytest.approx(1.0)
    assert mcs["HEALTHY"]["fp_voxels"] == 12 and mcs["HEALTHY"]["detected"] is True
    for variant in ("threshold", "threshold+lcc", "threshold+mcs"):
        agg = summary["aggregates"][variant]
        assert agg["sensitivity"] == 1.0 and agg["specificity"] == 0.5
        assert agg["detection"] == {
            "true_positive": 1,
            "false_negative": 0,
            "true_negative": 1,
            "false_positive": 1,
        }
        assert agg["fp_voxels_lesion_free"]["mean"] == 6.0 and agg["fp_voxels_lesion_free"]["max"] == 12.0
        lesion_dice = summary["cases"][1]["metrics"][variant]["dice"]  # 1.0 without the speck
        assert agg["fp_aware_dice"]["mean"] == pytest.approx((lesion_dice + 0.0 + 1.0) / 3)
        assert agg["lesion_dice"]["count"] == 1
    # the all-patient Dice mean counts HEALTHY as 0 and leaves SILENT out; the lesion-only mean does not
    assert summary["aggregates"]["threshold"]["dice"]["mean"] == pytest.approx(case["LESION"]["dice"] / 2)
    assert summary["aggregates"]["threshold"]["lesion_dice"]["mean"] == pytest.approx(2 * 16 / (25 + 16))
    assert summary["min_component_voxels"] == 10 and summary["voxel_spacing_mm"] is None
    strict, _ = evaluate_volumes(slices, threshold=0.5, min_component_voxels=13)
    assert strict["aggregates"]["threshold"]["specificity"] == 1.0


def test_voxel_spacing_gives_millilitres_and_hd95_in_mm():
    truth = np.zeros((2, 6, 6), bool)
    truth[0, 1:3, 1:3] = True
    prob = np.zeros((2, 6, 6), np.float32)
    prob[0, 1:3, 2:4] = 0.9  # shifted by one column
    summary, _ = evaluate_volumes({"P": _slices(prob, truth)}, 0.5, voxel_spacing_mm=[4.0, 0.5, 0.5])
    metrics = summary["cases"][0]["metrics"]["threshold"]
    assert metrics["fp_voxels"] == 2 and metrics["fp_ml"] == pytest.approx(2 * 4.0 * 0.25 / 1000)
    assert metrics["hd95"] == pytest.approx(0.5)  # one column of 0.5 mm
    assert summary["aggregates"]["threshold"]["fp_ml_lesion_free_slices"]["total"] == 0.0
    with pytest.raises(ValueError, match="voxel_spacing_mm"):
        evaluate_volumes({"P": _slices(prob, truth)}, 0.5, voxel_spacing_mm=[1.0, 1.0])


def test_tta_variant_uses_the_tta_probabilities():
    truth = np.zeros((2, 8, 8), bool)
    truth[:, 2:4, 2:4] = True
    plain = np.zeros((2, 8, 8), np.float32)  # misses everything
    tta = truth.astype(np.float32) * 0.7  # exact
    summary, _ = evaluate_volumes({"P": _slices(plain, truth, tta)}, threshold=0.5)
    metrics = summary["cases"][0]["metrics"]
    assert metrics["threshold"]["dice"] == 0.0
    assert math.isclose(metrics["tta"]["dice"], 1.0)
    assert math.isclose(metrics["tta+lcc"]["dice"], 1.0)


def test_flip_tta_inferer_averages_the_flipped_pass():
    class LeftBias(torch.nn.Module):  # output depends on the column: flips are visible
        def forward(self, x):
            columns = torch.arange(x.shape[-1], dtype=x.dtype).expand_as(x[:, :1])
            return x[:, 1:2] + columns

    x = torch.rand(2, 3, 4, 6)
    out = FlipTTAInferer(tta=True)(x, LeftBias())
    plain = x[:, 1:2] + torch.arange(6.0)
    flipped_back = x[:, 1:2] + torch.arange(6.0).flip(0)
    assert torch.allclose(out[:, 0:1], plain)
    assert torch.allclose(out[:, 1:2], (plain + flipped_back) / 2)
    with pytest.raises(ValueError, match="1 output channel"):
        FlipTTAInferer()(x, lambda t: torch.cat([t[:, :1], t[:, :1]], 1))
