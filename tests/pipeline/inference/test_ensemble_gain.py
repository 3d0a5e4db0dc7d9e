"""``python -m pipeline ensemble-gain``: the ensemble against each fold model and their mean, patient by
patient, on hand-made evaluations and end to end on a held-out phantom."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest

from pipeline.inference.ensemble_gain import add_arguments, ensemble_gain, format_gain, main
from pipeline.tracking.paired import ComparisonRefused
from tests.fold_support import phantom_slices, tiny_network, write_fold_run


def summary(dice: dict[str, float | None]) -> dict:
    """An evaluate.json summary with per-patient Dice of option threshold (None: lesion-free)."""
    cases = []
    for patient, value in dice.items():
        record = {"has_lesion": value is not None, "dice": value, "fp_voxels": 0 if value is not None else 5}
        cases.append({"patient": patient, "metrics": {"threshold": record}})
    return {"cases": cases}


def test_the_gain_is_the_ensemble_minus_each_fold_and_their_mean():
    ensemble = summary({"A": 0.8, "B": 0.7, "C": 0.9, "D": None})
    folds = [
        summary({"A": 0.7, "B": 0.6, "C": 0.9, "D": None}),
        summary({"A": 0.6, "B": 0.8, "C": 0.7, "D": None}),
    ]
    gain = ensemble_gain(ensemble, folds, n_resamples=200)
    first, second = gain["folds"]
    assert first["mean_difference"] == pytest.approx((0.1 + 0.1 + 0.0) / 3)
    assert second["mean_difference"] == pytest.approx((0.2 - 0.1 + 0.2) / 3)
    assert first["outcomes"] == {"b_better": 2, "a_better": 0, "ties": 1, "tie_tolerance": 1e-3}
    assert gain["fold_mean"]["mean_a"] == pytest.approx(np.mean([0.65, 0.7, 0.8]))
    assert gain["fold_mean"]["mean_difference"] == pytest.approx(np.mean([0.15, 0.0, 0.1]))
    rows = {r["patient"]: r for r in gain["patients"]}
    assert rows["A"]["folds"] == [0.7, 0.6] and rows["A"]["fold_mean"] == pytest.approx(0.65)
    assert "D" not in rows and [r["patient"] for r in gain["lesion_free"]] == ["D"]
    table = format_gain(gain)
    assert "fold 1" in table and "fold mean" in table and "+0.0833" in table


def test_evaluations_of_other_patients_are_refused():
    with pytest.raises(ComparisonRefused, match="only in fold 0: C"):
        ensemble_gain(summary({"A": 0.8, "B": 0.7}), [summary({"A": 0.7, "B": 0.6, "C": 0.9})])


@pytest.mark.slow
def test_the_command_evaluates_the_ensemble_and_its_folds_on_held_out_patients(tmp_path):
    from pipeline.data.phantom import generate_dataset

    heldout = generate_dataset(tmp_path / "heldout", n_patients=2, seed=7, workers=1)
    slices = phantom_slices(heldout)[4:20]
    outputs = tmp_path / "outputs"
    for i in range(2):
        write_fold_run(outputs, "cvg", i, 2, tiny_network(i, slices), {"train": ["X"], "val": ["Y"]})
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    crossval = outputs / "crossval" / "cvg"
    words = ["--crossval", str(crossval), "--dataset_dir", str(heldout), "--bundle_root", str(tmp_path)]
    assert main(parser.parse_args(words)) == 0
    out = crossval / f"heldout-{heldout.name}"
    gain = json.loads((out / "gain_threshold.json").read_text())
    ensemble = json.loads((out / "ensemble" / "summary.json").read_text())
    assert ensemble["checkpoint"] == str(crossval.resolve()) and gain["n_patients"] == 2
    fold0 = {
        c["patient"]: c["metrics"]["threshold"]["dice"]
        for c in json.loads((out / "fold0" / "summary.json").read_text())["cases"]
    }
    for row in gain["patients"]:
        assert row["folds"][0] == pytest.approx(fold0[row["patient"]])
        assert row["fold_mean"] == pytest.approx(np.mean(row["folds"]))
        assert 0.0 < row["ensemble"] < 1.0
    # the evaluations are kept: a second run reuses them
    stamp = (out / "fold1" / "summary.json").stat().st_mtime
    assert main(parser.parse_args(words)) == 0
    assert (out / "fold1" / "summary.json").stat().st_mtime == stamp
