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
