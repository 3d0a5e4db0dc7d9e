"""intensity "volume" end to end: a tiny training and its evaluation, checked against numpy alone."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
import torch.nn.functional as F

from tests.support import CONFIGS, TINY, run_bundle


def _bounds_by_hand(files: list[str]) -> np.ndarray:
    """The definition in numpy: head = brightest channel above 10% of its 99.9th percentile over
    the volume; per channel the 1st and 99th percentile of the head voxels. (3, 2)."""
    volume = np.stack([np.moveaxis(tifffile.imread(f), -1, 0) for f in files]).astype(np.float64)
    brightest = volume.max(axis=1)
    head = brightest > 0.1 * np.percentile(brightest, 99.9)
    return np.array([np.percentile(volume[:, c][head], [1, 99]) for c in range(3)])


def _network_input(files: list[str], bounds: np.ndarray) -> np.ndarray:
    """tifffile + numpy + torch: area resize to 64, each channel clipped to its bounds and scaled."""
    images = np.stack([np.moveaxis(tifffile.imread(f), -1, 0) for f in files]).astype(np.float32)
    x = F.interpolate(torch.from_numpy(images), size=(64, 64), mode="area").numpy().astype(np.float64)
    lo, hi = bounds[:, 0][None, :, None, None], bounds[:, 1][None, :, None, None]
    return np.clip((x - lo) / (hi - lo), 0.0, 1.0)


def _patient_slices(folder: Path) -> list[str]:
    files = [p for p in folder.glob("*.tif") if not p.stem.endswith("_mask")]
    return [str(p) for p in sorted(files, key=lambda p: int(p.stem.rsplit("_", 1)[1]))]


@pytest.mark.slow
def test_volume_intensity_trains_and_evaluates_as_computed_by_hand(tmp_path, tiny_phantom):
    from monai.bundle import ConfigWorkflow

    from pipeline.inference.preprocessing import bounds_key, image_preprocessing

    train = run_bundle(tmp_path, epochs=1, intensity="volume", dataset_dir=str(tiny_phantom))
    data = train.parser.get_parsed_content("data")
    assert all(len(r["intensity"]) == 3 for r in data.train + data.val)
    run_dir = Path(train.parser.get_parsed_content("run_dir"))
    config = json.loads((run_dir / "config.json").read_text())
    assert config["intensity"] == "volume"
    assert bounds_key(image_preprocessing(64, run_dir / "config.json")) == "intensity"

    evaluate = ConfigWorkflow(
        config_file=[str(CONFIGS / "train.json"), str(CONFIGS / "evaluate.json")],
        meta_file=str(CONFIGS / "metadata.json"),
        logging_file=False,
        workflow_type=None,
        **dict(TINY, bundle_root=str(tmp_path), intensity="volume", dataset_dir=str(tiny_phantom)),
    )
    evaluate.initialize()
    evaluate.run()
    evaluate.finalize()
    eval_dir = Path(evaluate.parser.get_parsed_content("eval_dir"))
    summary = json.loads((eval_dir / "summary.json").read_text())
    assert summary["cases"] and all(case["metrics"]["threshold"] for case in summary["cases"])

    # what the network saw, in training (cached dataset) and in the evaluation, against numpy
    for workflow, key in ((train, "train#dataset"), (evaluate, "validate#dataset")):
        dataset = workflow.parser.get_parsed_content(key)
        records = dataset.data
        for patient in sorted({r["patient"] for r in records})[:2]:
            files = _patient_slices(Path(next(r["image"] for r in records if r["patient"] == patient)).parent)
            bounds = _bounds_by_hand(files)
            expected = _network_input(files, bounds)
            for i, record in enumerate(records):
                if record["patient"] != patient:
                    continue
                np.testing.assert_allclose(record["intensity"], bounds, rtol=0, atol=1e-9)
                image = dataset[i]["image"]
                assert image.dtype == torch.float32 and tuple(image.shape) == (3, 64, 64)
                position = [Path(f).name for f in files].index(Path(record["image"]).name)
                np.testing.assert_allclose(image.numpy(), expected[position], rtol=0, atol=1e-5)
