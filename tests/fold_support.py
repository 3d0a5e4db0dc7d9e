"""Fold runs of a cross-validation as ``python -m pipeline crossval`` leaves them, for the ensemble tests.

Each fold is a run folder ``<output_root>/runs/<name>-fold<i>`` with ``models/model.pt`` (a seeded
tiny U-Net whose head bias makes about a fifth of the phantom's pixels lesion, so that masks are
neither empty nor full), ``models/final.pt``, ``config.json`` (the merged train.json and
crossval.json a fold run records, with the tiny settings, ``folds`` and the fold's ``split_file``)
and the split file itself.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from networks import UNet
from pipeline.inference.workflow import tiff_preprocessing
from pipeline.tracking.provenance import command_line_config

ROOT = Path(__file__).resolve().parents[1]
IMAGE_SIZE = 64
NETWORK = {"_target_": "networks.UNet", "channels_in": 3, "n_classes": 1, "depth": 3, "n_filters": 2}


def phantom_slices(folder: Path, image_size: int = IMAGE_SIZE) -> torch.Tensor:
    """Every image slice under ``folder`` (kaggle_3m layout) through the training preprocessing."""
    files = sorted(f for f in folder.glob("*/*.tif") if not f.stem.endswith("_mask"))
    chain = tiff_preprocessing(image_size)
    return torch.stack([chain({"image": str(f)})["image"] for f in files])


def tiny_network(seed: int, slices: torch.Tensor, network: dict | None = None) -> UNet:
    """A seeded untrained U-Net, its head bias set so that 20% of ``slices``' pixels are lesion."""
    torch.manual_seed(seed)
    model = UNet(**{k: v for k, v in (network or NETWORK).items() if k != "_target_"}).eval()
    with torch.no_grad():
        logits = model(slices)
        model.head.bias -= torch.quantile(logits.flatten()[::7], 0.8)
    return model


def write_fold_run(
    output_root: Path,
    name: str,
    fold: int,
    folds: int,
    model: torch.nn.Module,
    split: dict[str, list[str]],
    finished: bool = True,
    **settings,
) -> Path:
    """Fold ``fold``'s run folder (module docstring); ``settings`` replace train.json's keys."""
    run = output_root / "runs" / f"{name}-fold{fold}"
    (run / "models").mkdir(parents=True)
    torch.save(model.state_dict(), run / "models" / "model.pt")
    if finished:
        torch.save(model.state_dict(), run / "models" / "final.pt")
    split_file = output_root / "splits" / f"{name}.folds{folds}" / f"fold{fold}.json"
    split_file.parent.mkdir(parents=True, exist_ok=True)
    split_file.write_text(json.dumps(split))
    files = [str(ROOT / "bundle" / "configs" / n) for n in ("train.json", "crossval.json")]
    words = ["run", "training", "--config_file", "[" + ",".join(repr(f) for f in files) + "]"]
    config = command_line_config(words)  # the merged config a fold run records, crossval.json's code in it
    config.update(network_def=NETWORK, image_size=IMAGE_SIZE, bundle_root=str(output_root.parent), epochs=2)
    config.update(folds=folds, fold=fold, crossval_name=name, split_file=str(split_file), **settings)
    (run / "config.json").write_text(json.dumps(config))
    return run
