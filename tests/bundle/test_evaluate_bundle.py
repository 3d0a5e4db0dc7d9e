"""evaluate.json end to end: a tiny trained run, evaluated, checked against an independent pass."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
import tifffile
import torch
import torch.nn.functional as F

from networks import UNet
from tests.support import CONFIGS, TINY, run_bundle


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    from monai.bundle import ConfigWorkflow

    tmp_path = tmp_path_factory.mktemp("evaluate")
    run_bundle(tmp_path, epochs=1)
    workflow = ConfigWorkflow(
        config_file=[str(CONFIGS / "train.json"), str(CONFIGS / "evaluate.json")],
        meta_file=str(CONFIGS / "metadata.json"),
        logging_file=False,
        workflow_type=None,
        **dict(TINY, bundle_root=str(tmp_path)),
    )
    workflow.initialize()
    workflow.run()
    workflow.finalize()
    return tmp_path, workflow


def _independent_probabilities(model_path: Path, image_files: list[str]) -> np.ndarray:
    """tifffile + numpy + torch only: min-max scale, area resize to 64, the network, sigmoid."""
    network = UNet(n_filters=2, depth=3)
    network.load_state_dict(torch.load(model_path, weights_only=True))
    network.eval()
    images = []
    for path in image_files:
        rgb = tifffile.imread(path).astype(np.float32)  # (H, W, 3)
        rgb = (rgb - rgb.min()) / max(rgb.max() - rgb.min(), 1e-8)
        images.append(np.moveaxis(rgb, -1, 0))
    x = F.interpolate(torch.from_numpy(np.stack(images)), size=(64, 64), mode="area")
    with torch.no_grad():
        return torch.sigmoid(network(x))[:, 0].numpy()


def _mask(path: str) -> np.ndarray:
    mask = torch.from_numpy((tifffile.imread(path) > 127).astype(np.float32))[None, None]
    return F.interpolate(mask, size=(64, 64), mode="nearest-exact")[0, 0].numpy() > 0.5


@pytest.mark.slow
def test_summary_matches_an_independent_evaluation(evaluated):
    tmp_path, workflow = evaluated
    eval_dir = Path(workflow.parser.get_parsed_content("eval_dir"))
    summary = json.loads((eval_dir / "summary.json").read_text())
    assert set(summary["aggregates"]) == {
        "threshold",
        "threshold+lcc",
        "threshold+mcs",
        "tta",
        "tta+lcc",
        "tta+mcs",
    }
    ckpt = Path(workflow.parser.get_parsed_content("ckpt_path"))
    for case in summary["cases"]:
        assert case["slices"] == sorted(case["slices"])
        probs = _independent_probabilities(ckpt, case["images"])
        pred = probs > 0.5
        truth = np.stack([_mask(p) for p in case["labels"]])
        total = pred.sum() + truth.sum()
        expected = None if total == 0 else 2.0 * (pred & truth).sum() / total
        got = case["metrics"]["threshold"]["dice"]
        if expected is None:
            assert got is None
        else:
            assert got == pytest.approx(expected, abs=2e-3)
        assert case["metrics"]["threshold"]["true_voxels"] == int(truth.sum())
        assert case["metrics"]["threshold"]["has_lesion"] == bool(truth.any())
        fp_voxels = int((pred & ~truth).sum())
        assert abs(case["metrics"]["threshold"]["fp_voxels"] - fp_voxels) <= max(2, pred.size // 5000)
        assert abs(case["metrics"]["threshold"]["pred_voxels"] - int(pred.sum())) <= max(2, pred.size // 5000)


@pytest.mark.slow
def test_per_slice_csv_and_pictures(evaluated):
    tmp_path, workflow = evaluated
    eval_dir = Path(workflow.parser.get_parsed_content("eval_dir"))
    summary = json.loads((eval_dir / "summary.json").read_text())
    with open(eval_dir / "per_slice.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == summary["n_slices"] == sum(len(c["slices"]) for c in summary["cases"])
    for name in ("per_patient_dice.png",):
        picture = matplotlib.image.imread(eval_dir / name)
        assert picture.shape[0] > 100 and picture.shape[1] > 100
        assert picture[..., :3].std() > 0.01


@pytest.mark.slow
def test_evaluation_logged_to_the_training_run(evaluated):
    from mlflow import MlflowClient

    tmp_path, workflow = evaluated
    run_dir = Path(workflow.parser.get_parsed_content("ckpt_path")).parent.parent
    record = json.loads((run_dir / "mlflow_run.json").read_text())
    client = MlflowClient(tracking_uri=record["tracking_uri"])
    run = client.get_run(record["run_id"])
    summary = json.loads((run_dir / "evaluation" / "summary.json").read_text())
    mean = summary["aggregates"]["threshold"]["dice"]["mean"]
    assert mean is not None, "the phantom validation patient has a lesion: its Dice is defined"
    assert run.data.metrics["eval_threshold_dice_mean"] == pytest.approx(mean)
    aggregates = summary["aggregates"]["threshold"]
    assert run.data.metrics["eval_threshold_sensitivity"] == pytest.approx(aggregates["sensitivity"])
    assert run.data.metrics["eval_threshold_lesion_dice_mean"] == pytest.approx(
        aggregates["lesion_dice"]["mean"]
    )
    assert aggregates["specificity"] is None and "eval_threshold_specificity" not in run.data.metrics
    artifacts = {a.path for a in client.list_artifacts(record["run_id"], "evaluation")}
    assert "evaluation/summary.json" in artifacts and "evaluation/per_slice.csv" in artifacts
    assert "evaluation/learning_curves.png" in artifacts


@pytest.mark.slow
def test_evaluation_creates_no_run_folder_of_its_own(evaluated):
    tmp_path, _ = evaluated
    runs = [p for p in (tmp_path / "outputs" / "runs").iterdir()]
    assert len(runs) == 1 and (runs[0] / "models" / "model.pt").is_file(), runs
