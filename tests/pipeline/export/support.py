"""Constants and helpers of the export tests (their fixtures are in this folder's conftest.py)."""

from __future__ import annotations

from pathlib import Path

import torch

from pipeline.inference.workflow import tiff_preprocessing

ROOT = Path(__file__).resolve().parents[3]
IMAGE_SIZE = 64
NETWORK = {
    "_target_": "networks.UNet",
    "channels_in": 3,
    "n_classes": 1,
    "depth": 3,
    "n_filters": 2,
    "dropout": 0.6,
}


def phantom_slices(folder: Path) -> torch.Tensor:
    files = sorted(folder.glob("*/*.tif"), key=lambda p: p.stem)
    files = [f for f in files if not f.stem.endswith("_mask")]
    chain = tiff_preprocessing(IMAGE_SIZE)
    return torch.stack([chain({"image": str(f)})["image"] for f in files])
