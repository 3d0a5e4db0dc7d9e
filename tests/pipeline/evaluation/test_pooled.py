"""Tests of the out-of-fold pooling: the bootstrap interval, the pooled figures and the leakage
refusals on hand-made fold summaries, and the masks the out-of-fold report saves."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from pipeline.evaluation.pooled import PoolingError, bootstrap_ci, pool_folds, write_pooled
from pipeline.evaluation.pooled_masks import OutOfFoldReport, read_masks
from pipeline.evaluation.pooled_tracking import pooled_metrics

DICE = [0.91, 0.42, 0.77, float("nan"), 0.66, 0.85, 0.12]


def _percentile(sorted_values: list[float], q: float) -> float:
    """Linear interpolation between the closest ranks, as numpy's default, written out."""
    position = (len(sorted_values) - 1) * q
    low = math.floor(position)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (position - low)


@pytest.mark.parametrize("statistic", ["mean", "median"])
def test_bootstrap_interval_matches_a_recomputation_by_hand(statistic: str) -> None:
    samples, seed = 2000, 7
    values = [v for v in DICE if not math.isnan(v)]  # undefined Dice left out first
    rng = np.random.default_rng(seed)
    stats = []
    for _ in range(samples):  # one draw at a time, statistics in plain Python
        draw = sorted(values[int(rng.integers(0, len(values)))] for _ in values)
        middle = len(draw) // 2
        median = draw[middle] if len(draw) % 2 else (draw[middle - 1] + draw[middle]) / 2
        stats.append(sum(draw) / len(draw) if statistic == "mean" else median)
    stats.sort()
    expected = [_percentile(stats, 0.025), _percentile(stats, 0.975)]
    got = bootstrap_ci(DICE, samples=samples, seed=seed, statistic=statistic)
    assert got == pytest.approx(expected, abs=1e-12)
    centre = sum(values) / len(values) if statistic == "mean" else 0.715  # median of the six
    assert got[0] < centre < got[1]
    if statistic == "mean":  # (the median's percentiles fall on a few discrete values)
        assert bootstrap_ci(DICE, samples=samples, seed=seed + 1, statistic=statistic) != got


def test_bootstrap_interval_edge_cases() -> None:
    assert bootstrap_ci([0.5, 0.5, 0.5], samples=50) == [0.5, 0.5]
    assert bootstrap_ci([float("nan")]) is None
    for bad in ({"samples": 0}, {"level": 1.0}, {"statistic": "mode"}):
        with pytest.raises(ValueError):
            bootstrap_ci(DICE, **bad)


VARIANTS = ("threshold", "tta+lcc")


def _metrics(dice: float | None, has_lesion: bool = True) -> dict:
    detected = dice is not None and (dice > 0 or not has_lesion)
    return {
        "dice": dice,
        "iou": None if dice is None else dice / (2 - dice),
        "hd95": None if dice is None else 3.0,
        "empty": dice is None,
        "has_lesion": has_lesion,
        "detected": detected,
        "fp_voxels": 0 if has_lesion or dice is None else 40,
        "fp_voxels_lesion_free_slices": 5,
        "fp_aware_dice": (1.0 if not detected else 0.0) if not has_lesion else dice,
        "pred_voxels": 10,
        "true_voxels": 10 if has_lesion else 0,
    }


def _summary(cases: dict[str, tuple], threshold: float = 0.5) -> dict:
    """A fold's summary.json: patient -> (Dice of 'threshold', Dice of 'tta+lcc', has_lesion)."""
    return {
        "threshold": threshold,
        "min_component_voxels": 10,
        "voxel_spacing_mm": None,
        "checkpoint": "run/models/model.pt",
        "aggregates": {v: {} for v in VARIANTS},
        "cases": [
            {
                "patient": p,
                "slices": [1, 2],
                "images": [f"{p}_1.tif", f"{p}_2.tif"],
                "labels": [f"{p}_1_mask.tif", f"{p}_2_mask.tif"],
                "metrics": {v: _metrics(d, lesion) for v, d in zip(VARIANTS, (a, b))},
            }
            for p, (a, b, lesion) in cases.items()
        ],
    }


def _folds(
    fold1_cases: dict | None = None, fold1_train: list[str] | None = None, threshold: float = 0.5
) -> list:
    fold0 = {"A": (0.9, 0.95, True), "B": (0.5, 0.55, True)}
    fold1 = fold1_cases or {"C": (0.2, 0.3, True), "D": (0.7, 0.8, True), "E": (None, None, False)}
    return [
        {
            "fold": 0,
            "patients": ["A", "B"],
            "train": ["C", "D", "E"],
            "summary": _summary(fold0),
            "summary_file": "f0/summary.json",
            "masks_dir": "f0/masks",
        },
        {
            "fold": 1,
            "patients": ["C", "D", "E"],
            "train": fold1_train or ["A", "B"],
            "summary": _summary(fold1, threshold),
            "summary_file": "f1/summary.json",
            "masks_dir": "f1/masks",
        },
    ]


def test_pooled_figures_by_hand(tmp_path: Path) -> None:
    pooled = pool_folds(_folds(), ["A", "B", "C", "D", "E"], samples=500, seed=0)
    assert [c["patient"] for c in pooled["cases"]] == ["A", "B", "C", "D", "E"]
    assert [c["fold"] for c in pooled["cases"]] == [0, 0, 1, 1, 1]
    assert pooled["cases"][2]["masks"] == str(Path("f1/masks") / "C.npz")
    dice = pooled["aggregates"]["threshold"]["dice"]
    assert dice["mean"] == pytest.approx((0.9 + 0.5 + 0.2 + 0.7) / 4)  # E undefined: left out
    assert dice["median"] == pytest.approx((0.5 + 0.7) / 2)
    assert dice["n_undefined"] == 1 and dice["n_total"] == 5
    assert dice["mean_ci95"] == bootstrap_ci([0.9, 0.5, 0.2, 0.7], samples=500, seed=0)
    folds = pooled["aggregates"]["threshold"]["fold_dice"]
    assert [f["fold"] for f in folds] == [0, 1]
    assert [f["mean"] for f in folds] == pytest.approx([0.7, 0.45])
    tta = pooled["aggregates"]["tta+lcc"]
    assert tta["dice"]["mean"] == pytest.approx((0.95 + 0.55 + 0.3 + 0.8) / 4)
    assert tta["sensitivity"] == 1.0 and tta["specificity"] == 1.0  # E not detected
    assert tta["fp_voxels_lesion_free"]["total"] == 0
    named = {(n, s): v for n, v, s in pooled_metrics(pooled)}
    assert named[("eval_threshold_dice_mean", 0)] == pytest.approx(0.575)
    assert named[("eval_tta_lcc_dice_median", 0)] == pytest.approx((0.55 + 0.8) / 2)
    assert named[("fold_threshold_dice_mean", 1)] == pytest.approx(0.45)
    assert named[("eval_threshold_dice_mean_ci95_low", 0)] == dice["mean_ci95"][0]
    files = write_pooled(tmp_path / "cv", pooled)
    assert json.loads(files["summary"].read_text())["aggregates"]["threshold"]["dice"]["mean"] == dice["mean"]
    assert files["dice_chart"].stat().st_size > 1000


@pytest.mark.parametrize(
    ("folds", "message"),
    [
        (_folds(fold1_train=["A", "C"]), "scores 1 patients its model trained on (C): not out of fold"),
        (_folds({"C": (0.2, 0.3, True), "D": (0.7, 0.8, True)}), "missing: E"),
        (
            _folds(
                {"C": (0.2, 0.3, True), "D": (0.7, 0.8, True), "E": (0.1, 0.1, False), "F": (0.1, 0.1, True)}
            ),
            "F",
        ),
        (_folds(threshold=0.4), "evaluated with different threshold (0.4, 0.5)"),
    ],
)
def test_pooling_refuses_what_is_not_out_of_fold(folds: list, message: str) -> None:
    with pytest.raises(PoolingError, match=message.replace("(", r"\(").replace(")", r"\)")):
        pool_folds(folds, ["A", "B", "C", "D", "E"])


def test_pooling_refuses_a_patient_no_fold_scores() -> None:
    with pytest.raises(PoolingError, match="no fold scores 1 patients \\(G\\)"):
        pool_folds(_folds(), ["A", "B", "C", "D", "E", "G"])


def test_out_of_fold_report_saves_the_masks_it_scores(tmp_path: Path) -> None:
    """Two blobs of probability; the +lcc mask keeps the larger; the summary's Dice is the masks'."""
    prob = np.zeros((3, 8, 8), np.float32)
    prob[0:2, 1:4, 1:4] = 0.9  # 18 voxels
    prob[2, 6:8, 6:8] = 0.7  # 4 voxels, another component
    truth = np.zeros((3, 8, 8), bool)
    truth[0:3, 1:3, 1:3] = True  # 12 voxels, 8 of them predicted
    report = OutOfFoldReport(str(tmp_path / "evaluation"), pictures=False)
    for z, index in enumerate((4, 5, 6)):
        report.slices["P1"][index] = {
            "prob": prob[z],
            "prob_tta": prob[z] * 0.6,  # 0.54 and 0.42: tta keeps the big blob only
            "truth": truth[z],
            "flair": np.zeros((8, 8), np.uint8),
            "image_file": f"P1_{index}.tif",
            "label_file": f"P1_{index}_mask.tif",
        }
    summary = report.completed()
    masks = read_masks(tmp_path / "evaluation" / "masks" / "P1.npz")
    assert masks["slices"].tolist() == [4, 5, 6]
    assert (masks["truth"] == truth).all()
    assert masks["threshold"].sum() == 22 and (masks["threshold"] == (prob > 0.5)).all()
    assert masks["threshold+lcc"].sum() == 18 and not masks["threshold+lcc"][2].any()
    assert masks["tta"].sum() == 18
    for variant in ("threshold", "threshold+lcc", "tta", "tta+lcc", "threshold+mcs", "tta+mcs"):
        pred = masks[variant]
        expected = 2 * int((pred & truth).sum()) / (int(pred.sum()) + int(truth.sum()))
        assert summary["cases"][0]["metrics"][variant]["dice"] == pytest.approx(expected), variant
    assert summary["cases"][0]["metrics"]["threshold"]["dice"] == pytest.approx(2 * 8 / (22 + 12))
