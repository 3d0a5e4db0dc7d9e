"""The recipe pieces of train.json, checked against hand computations (no training)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from monai.bundle import ConfigParser

CONFIGS = Path(__file__).resolve().parents[2] / "bundle" / "configs"


def _parser(*overlays: str) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config([str(CONFIGS / "train.json")] + [str(CONFIGS / o) for o in overlays])
    return parser


def test_loss_is_03_dice_plus_07_bce_over_the_batch():
    loss_fn = _parser().get_parsed_content("loss")
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 1, 8, 8))
    target = (rng.random((3, 1, 8, 8)) > 0.7).astype(np.float64)
    p = 1.0 / (1.0 + np.exp(-logits))
    dice = 1.0 - (2.0 * np.sum(p * target) + 1.0) / (np.sum(p) + np.sum(target) + 1.0)
    bce = -np.mean(target * np.log(p) + (1 - target) * np.log(1 - p))
    expected = 0.3 * dice + 0.7 * bce
    got = loss_fn(torch.tensor(logits, dtype=torch.float64), torch.tensor(target)).item()
    assert math.isclose(got, expected, rel_tol=1e-9, abs_tol=1e-9)


def test_recipe_hyperparameters_are_the_tutorials():
    parser = _parser()
    assert parser["epochs"] == 20
    assert parser["batch_size"] == 4
    assert parser["learning_rate"] == 0.1
    assert parser["momentum"] == 0.9
    assert parser["network_def"]["n_filters"] == 6 and parser["network_def"]["depth"] == 5
    assert parser["network_def"]["dropout"] == 0.6
    augment = parser["augment"]
    assert (augment["zoom_min"], augment["zoom_max"], augment["rotate_degrees"], augment["flip_prob"]) == (
        0.95,
        1.05,
        15,
        0.5,
    )
    # masks always nearest-neighbour, the horizontal flip over columns (spatial axis 1 of C,H,W)
    for transform in parser["augmentations"]:
        if "mode" in transform:
            assert transform["mode"][1] in ("nearest", "nearest-exact")
    flip = next(t for t in parser["augmentations"] if t["_target_"] == "RandFlipd")
    assert flip["spatial_axis"] == 1
