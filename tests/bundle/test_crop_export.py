"""An exported bundle of a crop "head" model vendors the crop's code and infers as the project does."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from monai.bundle import ConfigWorkflow

from networks import UNet
from tests.pipeline.export.support import NETWORK
from tests.support import CONFIGS

SIDE = 64


def _masks(folder: Path) -> dict[str, np.ndarray]:
    return {p.relative_to(folder).as_posix(): tifffile.imread(p) for p in sorted(folder.rglob("*_mask.tif"))}


@pytest.mark.slow
def test_the_exported_bundle_of_a_crop_head_model_infers_as_the_project(tmp_path):
    from pipeline.data.head_box import tiff_head_box
    from pipeline.data.phantom import generate_dataset
    from pipeline.export.build import export_bundle
    from pipeline.export.sources import source_from_checkpoint

    data = generate_dataset(tmp_path / "data", n_patients=1, seed=3, workers=1)
    run = tmp_path / "runs" / "unet-crop"
    (run / "models").mkdir(parents=True)
    torch.manual_seed(0)
    network = UNet(**{k: v for k, v in NETWORK.items() if k != "_target_"}).eval()
    with torch.no_grad():
        network.head.bias += 0.3  # some lesion, not all: the masks mean something
    torch.save(network.state_dict(), run / "models" / "model.pt")
    config = json.loads((CONFIGS / "train.json").read_text())
    config.update(network_def=NETWORK, image_size=SIDE, bundle_root=str(tmp_path), epochs=2)
    config.update(crop="head", intensity="slice")
    (run / "config.json").write_text(json.dumps(config))
    bundle, _ = export_bundle(
        source_from_checkpoint(run / "models" / "model.pt"), tmp_path / "export" / "lgg"
    )
    for module in ("pipeline/data/head_box.py", "transforms/crop.py", "pipeline/data/volume_stats.py"):
        assert (bundle / "scripts" / module).is_file(), module
    assert json.loads((bundle / "configs" / "train.json").read_text())["crop"] == "head"

    theirs, ours = tmp_path / "theirs", tmp_path / "ours"
    command = [
        sys.executable,
        "-m",
        "monai.bundle",
        "run",
        "--config_file",
        str(bundle / "configs" / "inference.json"),
    ]
    command += ["--bundle_root", str(bundle), "--dataset_dir", str(data), "--output_dir", str(theirs)]
    command += ["--num_workers", "0"]
    environment = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = subprocess.run(
        command, cwd=elsewhere, env=environment, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]

    workflow = ConfigWorkflow(
        config_file=str(CONFIGS / "inference.json"),
        meta_file=str(CONFIGS / "metadata.json"),
        logging_file=False,
        workflow_type="infer",
        ckpt_path=str(run / "models" / "model.pt"),
        dataset_dir=str(data),
        output_dir=str(ours),
        num_workers=0,
        largest_component=json.loads((bundle / "configs" / "inference.json").read_text())[
            "largest_component"
        ],
        tta=json.loads((bundle / "configs" / "inference.json").read_text())["tta"],
    )
    workflow.initialize()
    workflow.run()
    workflow.finalize()

    expected, got = _masks(ours), _masks(theirs)
    assert sorted(got) == sorted(expected) and expected
    patient = next(p for p in data.iterdir() if p.is_dir())
    files = sorted(f for f in patient.glob("*.tif") if not f.stem.endswith("_mask"))
    top, left, bottom, right = tiff_head_box(sorted(files, key=lambda p: int(p.stem.rsplit("_", 1)[1])))
    for name, mask in expected.items():
        np.testing.assert_array_equal(got[name], mask, err_msg=name)
        assert mask.shape == (256, 256)
        outside = np.ones(mask.shape, bool)
        outside[max(top, 0) : bottom, max(left, 0) : right] = False
        assert not mask[outside].any(), name
    share = np.mean([m.mean() > 0 for m in expected.values()])
    assert share > 0.2, share  # lesion on a good part of the slices: the comparison means something
