"""SliceStack and the PatientDetection validation metric, run on an ignite Engine like the evaluator's."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from ignite.engine import Engine
from scipy import ndimage

from pipeline.evaluation.ignite_metrics import PatientDetection, PerVolumeDice
from pipeline.evaluation.slice_stack import SliceStack


def _patients() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """patient -> (probabilities, truth), (slices, 8, 8); slice numbers are 1..slices."""
    rng = np.random.default_rng(0)
    truth_a = np.zeros((4, 8, 8), dtype=bool)
    truth_a[1:3, 2:6, 2:6] = True
    prob_a = np.where(truth_a, 0.9, 0.1) + 0.0
    prob_a[0, 0:2, 0:2] = 0.8  # a 4-voxel false positive on a lesion-free slice
    prob_a[1:3, 2, 2:6] = 0.3  # a missed row of the lesion
    truth_b = np.zeros((3, 8, 8), dtype=bool)
    prob_b = rng.random((3, 8, 8)) * 0.4
    prob_b[:, 5:7, 5:7] = 0.7  # 12 voxels joined through the slices: a healthy brain called positive
    truth_c = np.zeros((2, 8, 8), dtype=bool)
    prob_c = np.full((2, 8, 8), 0.2)
    return {"TCGA_A": (prob_a, truth_a), "TCGA_B": (prob_b, truth_b), "TCGA_C": (prob_c, truth_c)}


def _run(metrics: dict, patients: dict, batch_size: int = 3) -> dict:
    """Run an evaluator-like engine (decollated output and batch) over the slices in shuffled order."""
    items = [(p, z) for p, (prob, _) in patients.items() for z in range(prob.shape[0])]
    order = np.random.default_rng(1).permutation(len(items))
    batches = [[items[k] for k in order[i : i + batch_size]] for i in range(0, len(items), batch_size)]

    def step(engine: Engine, batch: list) -> list[dict]:
        engine.state.batch = [{"patient": p, "slice": z + 1} for p, z in batch]
        return [
            {
                "pred": torch.as_tensor(patients[p][0][z], dtype=torch.float32)[None],
                "label": torch.as_tensor(patients[p][1][z], dtype=torch.float32)[None],
            }
            for p, z in batch
        ]

    engine = Engine(step)
    for name, metric in metrics.items():
        metric.attach(engine, name)
    engine.run(batches, max_epochs=1)
    return dict(engine.state.metrics)


def _expected(patients: dict, min_voxels: int) -> dict:
    """The figures written out with numpy and scipy.ndimage.label (face connectivity)."""
    per = {}
    for patient, (prob, truth) in patients.items():
        pred = prob > 0.5
        labels, n = ndimage.label(pred)
        largest = max((int((labels == k).sum()) for k in range(1, n + 1)), default=0)
        total = pred.sum() + truth.sum()
        free_slices = [z for z in range(truth.shape[0]) if not truth[z].any()]
        per[patient] = {
            "lesion": bool(truth.any()),
            "dice": 2 * (pred & truth).sum() / total if total else float("nan"),
            "detected": largest >= min_voxels,
            "voxels": int(pred.sum()),
            "free_slice_voxels": int(sum(pred[z].sum() for z in free_slices)),
        }
    lesion = [v for v in per.values() if v["lesion"]]
    free = [v for v in per.values() if not v["lesion"]]
    scores = [v["dice"] if v["lesion"] else float(not v["detected"]) for v in per.values()]
    return {
        "val_fp_aware_dice": np.mean(scores),
        "val_lesion_dice": np.mean([v["dice"] for v in lesion]),
        "val_sensitivity": np.mean([v["detected"] for v in lesion]),
        "val_specificity": np.mean([not v["detected"] for v in free]),
        "val_fp_voxels_lesion_free": np.mean([v["voxels"] for v in free]),
        "val_fp_voxels_lesion_free_slices": np.mean([v["free_slice_voxels"] for v in per.values()]),
    }


def test_patient_detection_matches_an_independent_computation() -> None:
    patients = _patients()
    got = _run({"val_fp_aware_dice": PatientDetection(min_component_voxels=10)}, patients)
    expected = _expected(patients, 10)
    assert set(got) == set(expected)
    for name, value in expected.items():
        assert got[name] == pytest.approx(value), name
    # by hand: A is found (Dice 2*24/(28+32)), B (12 voxels) is called positive, C is silent
    assert got["val_specificity"] == 0.5 and got["val_sensitivity"] == 1.0
    assert got["val_fp_aware_dice"] == pytest.approx((48 / 60 + 0.0 + 1.0) / 3)
    assert got["val_fp_voxels_lesion_free"] == pytest.approx(6.0)  # (12 + 0) / 2
    # B's blob is 12 voxels: with 13 asked for, B is a true negative
    strict = _run({"val_fp_aware_dice": PatientDetection(min_component_voxels=13)}, patients)
    assert strict["val_specificity"] == 1.0 and strict["val_fp_aware_dice"] == pytest.approx((0.8 + 2) / 3)


def test_without_lesion_free_patients_it_equals_per_volume_dice_and_leaves_specificity_out() -> None:
    patients = {k: v for k, v in _patients().items() if k == "TCGA_A"}
    got = _run({"val_volume_dice": PerVolumeDice(), "val_fp_aware_dice": PatientDetection()}, patients)
    assert got["val_fp_aware_dice"] == pytest.approx(got["val_volume_dice"])
    assert got["val_lesion_dice"] == pytest.approx(got["val_volume_dice"])
    assert "val_specificity" not in got and "val_fp_voxels_lesion_free" not in got
    with pytest.raises(ValueError, match="min_component_voxels"):
        PatientDetection(min_component_voxels=0)


def test_patient_detection_needs_patient_and_slice() -> None:
    metric = PatientDetection()
    with pytest.raises(KeyError, match="PatientDetection needs 'patient' and 'slice'"):
        metric.update_item({"pred": torch.zeros(1, 4, 4), "label": torch.zeros(1, 4, 4)}, {"patient": "P"})


def test_slice_stack_restacks_in_slice_order_and_merges() -> None:
    rng = np.random.default_rng(2)
    pred = rng.random((5, 6, 7)) < 0.3
    truth = rng.random((5, 6, 7)) < 0.2
    truth[3] = False
    pred[1] = False
    whole, first, second = SliceStack(), SliceStack(), SliceStack()
    for z in (4, 0, 3, 1, 2):
        whole.add("TCGA_A", z + 10, pred[z], truth[z])
        (first if z % 2 else second).add("TCGA_A", z + 10, pred[z], truth[z])
    merged = SliceStack()
    merged.merge(pickle.loads(pickle.dumps(first.state())))  # what all_gather_object does
    merged.merge(second.state())
    for stack in (whole, merged):
        got_pred, got_truth = stack.volumes()["TCGA_A"]
        assert np.array_equal(got_pred, pred) and np.array_equal(got_truth, truth)
    assert whole.state()["TCGA_A"][11][1] is None  # an empty mask takes no room


def test_slice_stack_rejects_duplicates_and_mixed_shapes() -> None:
    stack = SliceStack()
    stack.add("TCGA_A", 1, np.ones((4, 4)), np.zeros((4, 4)))
    with pytest.raises(ValueError, match="TCGA_A slice 1 was added twice"):
        stack.add("TCGA_A", 1, np.ones((4, 4)), np.zeros((4, 4)))
    other = SliceStack()
    other.add("TCGA_B", 1, np.ones((4, 4)), np.zeros((4, 4)))
    other.add("TCGA_A", 1, np.ones((4, 4)), np.zeros((4, 4)))
    with pytest.raises(ValueError, match="TCGA_A slice 1 is in both"):
        stack.merge(other.state())
    assert list(stack.state()) == ["TCGA_A"]  # a failed merge adds nothing
    stack.add("TCGA_A", 2, np.ones((5, 4)), np.zeros((5, 4)))
    with pytest.raises(ValueError, match="differ in shape"):
        stack.volumes()
    with pytest.raises(ValueError, match=r"expected \(H, W\)"):
        stack.add("TCGA_A", 3, np.ones((1, 4, 4)), np.zeros((1, 4, 4)))
