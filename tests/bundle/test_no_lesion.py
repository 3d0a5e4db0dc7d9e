"""Training on a dataset without a single lesion warns and still completes (issue #7)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import tifffile
import torch

from pipeline.data.phantom import generate_dataset
from tests.support import run_bundle


@pytest.mark.slow
def test_training_without_any_lesion_warns_and_completes(tmp_path: Path, caplog):
    data = generate_dataset(tmp_path / "no_lesion", n_patients=4, seed=3, workers=1, lesion_free=1.0)
    masks = list(Path(data).glob("*/*_mask.tif"))
    assert masks and not any(tifffile.imread(m).any() for m in masks)  # really no lesion

    with caplog.at_level(logging.WARNING):
        workflow = run_bundle(tmp_path / "bundle", dataset_dir=str(data), epochs=1)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("lesion" in w.lower() for w in warnings), warnings

    ckpt_dir = Path(workflow.parser.get_parsed_content("ckpt_dir"))
    final = torch.load(ckpt_dir / "final.pt", weights_only=True)
    assert final["trainer"]["iteration"] == final["trainer"]["epoch_length"]  # one epoch
    # both masks empty for every validation patient: no defined Dice, reported as 0.0, not NaN
    metrics = workflow.parser.get_parsed_content("validate#evaluator").state.metrics
    assert metrics["val_volume_dice"] == 0.0
    # the false-positive figures are measured on the lesion-free patients; sensitivity has none to count
    assert 0.0 <= metrics["val_fp_aware_dice"] == metrics["val_specificity"] <= 1.0
    assert metrics["val_fp_voxels_lesion_free"] >= 0.0 and "val_sensitivity" not in metrics
    state = torch.load(ckpt_dir / "model.pt", weights_only=True)
    assert all(torch.isfinite(v).all() for v in state.values())


@pytest.mark.slow
def test_a_small_model_on_the_hard_phantom_reports_its_false_positives(tmp_path: Path):
    """``--phantom_hard true`` generates the hard phantom (in its own folder) and validation on it
    reports, beside Dice, the false-positive figures of its lesion-free and lesion patients."""
    import json

    from mlflow import MlflowClient

    # the hard phantom of 7 patients, seed 0, has one lesion-free patient (TCGA_CS_7112): a split
    # written by hand (as users may) puts it into validation beside two lesion patients
    split_file = tmp_path / "split.json"
    val = ["TCGA_CS_7112_20000908", "TCGA_DU_3417_20050809", "TCGA_HT_6647_20040924"]
    train = [
        "TCGA_CS_6746_19901002",
        "TCGA_DU_5474_19980219",
        "TCGA_FG_8366_19971028",
        "TCGA_HT_5225_19911113",
    ]
    split_file.write_text(json.dumps({"n_val": 3, "seed": 0, "train": train, "val": val}))
    settings = dict(phantom_hard=True, phantom_patients=7, n_val=3, epochs=1, system_metrics=False)
    workflow = run_bundle(tmp_path, split_file=str(split_file), **settings)
    outputs = tmp_path / "outputs"
    assert (outputs / "phantom_lgg_hard").is_dir() and not (outputs / "phantom_lgg").exists()
    split = json.loads(Path(workflow.parser.get_parsed_content("data").split_file).read_text())
    has_lesion = {
        patient: any(
            tifffile.imread(m).any() for m in (outputs / "phantom_lgg_hard" / patient).glob("*_mask.tif")
        )
        for patient in split["val"]
    }
    assert has_lesion == {val[0]: False, val[1]: True, val[2]: True}

    run_dir = Path(workflow.parser.get_parsed_content("run_dir"))
    record = json.loads((run_dir / "mlflow_run.json").read_text())
    metrics = MlflowClient(tracking_uri=record["tracking_uri"]).get_run(record["run_id"]).data.metrics
    for name in ("val_fp_aware_dice", "val_lesion_dice", "val_sensitivity", "val_specificity"):
        assert 0.0 <= metrics[name] <= 1.0, name
    assert metrics["val_fp_voxels_lesion_free"] >= 0.0 and metrics["val_fp_voxels_lesion_free_slices"] >= 0.0
    # specificity counts the lesion-free patients only: a multiple of 1 / their number
    n_free = sum(not v for v in has_lesion.values())
    assert round(metrics["val_specificity"] * n_free, 6) == int(round(metrics["val_specificity"] * n_free))
