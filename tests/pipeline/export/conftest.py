"""Fixtures of the export tests: a one-patient phantom, a run folder as training leaves it, and
the bundle exported from it."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch

from networks import UNet
from pipeline.export.build import export_bundle
from pipeline.export.sources import source_from_checkpoint
from tests.pipeline.export.support import IMAGE_SIZE, NETWORK, ROOT, phantom_slices


@pytest.fixture(scope="module")
def phantom(tmp_path_factory) -> Path:
    from pipeline.data.phantom import generate_dataset

    folder = tmp_path_factory.mktemp("phantom") / "data"
    generate_dataset(folder, n_patients=1, seed=3, workers=1)
    return folder


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, phantom) -> Path:
    """A run folder as training leaves it: models/model.pt, config.json and an evaluation summary."""
    run = tmp_path_factory.mktemp("runs") / "unet-test"
    (run / "models").mkdir(parents=True)
    torch.manual_seed(0)
    network = UNet(**{k: v for k, v in NETWORK.items() if k != "_target_"}).eval()
    with torch.no_grad():
        logits = network(phantom_slices(phantom))
        network.head.bias -= torch.quantile(logits.flatten()[::7], 0.8)
    torch.save(network.state_dict(), run / "models" / "model.pt")
    config = json.loads((ROOT / "bundle" / "configs" / "train.json").read_text())
    config.update(network_def=NETWORK, image_size=IMAGE_SIZE, bundle_root=str(run.parent), epochs=2)
    (run / "config.json").write_text(json.dumps(config))
    # the evaluation's options; threshold+lcc scores best, threshold+mcs (no inference option) higher still
    dice = {"threshold": 0.61, "threshold+lcc": 0.66, "threshold+mcs": 0.9, "tta": 0.63, "tta+lcc": 0.66}
    summary = {
        "n_patients": 3,
        "aggregates": {name: {"dice": {"mean": mean, "median": 0.7}} for name, mean in dice.items()},
    }
    (run / "evaluation").mkdir()
    (run / "evaluation" / "summary.json").write_text(json.dumps(summary))
    return run


@pytest.fixture(scope="module")
def exported(tmp_path_factory, run_dir) -> tuple[Path, Path, float]:
    out = tmp_path_factory.mktemp("export") / "lgg_unet_bundle"
    started = time.perf_counter()
    bundle, archive = export_bundle(source_from_checkpoint(run_dir / "models" / "model.pt"), out)
    return bundle, archive, time.perf_counter() - started
