"""MONAI's own lazy resampling on train.json's 2-D augmentations: why transforms/fused.py exists.

In MONAI 1.6.1, ``Compose(RandZoomd, RandRotated, RandFlipd, lazy=True)`` on a 2-D slice

- raises ``RuntimeError: mat1 and mat2 shapes cannot be multiplied (3x3 and 4x4)`` when the
  zoom and rotation fire and the flip does not (the pending no-op's matrix is 4x4, the 2-D
  ones 3x3), so on about half of train.json's slices (flip probability 0.5);
- when every transform fires, runs but resamples the mask bilinearly, ignoring its "nearest"
  modes (the mask is no longer 0/1), unless Compose is given ``overrides`` for the mask.

These tests pin that down and fail the day MONAI changes it, saying what to do then.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser
from monai.transforms import Compose, RandFlipd, RandRotated, RandZoomd

TRAIN_JSON = Path(__file__).resolve().parents[2] / "bundle" / "configs" / "train.json"
MATMUL = "mat1 and mat2 shapes cannot be multiplied (3x3 and 4x4)"
SWITCH = (
    "MONAI's lazy resampling now works on 2-D zoom+rotate: switch train.json to Compose(lazy=True) "
    "and delete transforms/fused.py, transforms/coordinates.py"
)
MASK_MODE = (
    "(first check test_lazy_resampling_ignores_the_masks_nearest_mode: while it passes, the mask "
    "needs Compose(..., overrides={'label': {'mode': 'nearest'}}))"
)


def _bundle_augmentations(flip_prob: float | None = None) -> list:
    """train.json's ``augmentations``, MONAI's own objects, with zoom and rotation always on."""
    parser = ConfigParser()
    parser.read_config(str(TRAIN_JSON))
    parser["augment"]["zoom_prob"] = 1.0
    parser["augment"]["rotate_prob"] = 1.0
    if flip_prob is not None:
        parser["augment"]["flip_prob"] = flip_prob
    augmentations = parser.get_parsed_content("augmentations")
    assert [type(t) for t in augmentations] == [RandZoomd, RandRotated, RandFlipd]
    assert [list(t.mode) for t in augmentations[:2]] == [
        ["bilinear", "nearest-exact"],
        ["bilinear", "nearest"],
    ]
    return augmentations


def _slice(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "image": torch.rand(3, 64, 64, generator=g),
        "label": (torch.rand(1, 64, 64, generator=g) > 0.5).float(),
    }


def _is_binary(mask: torch.Tensor) -> bool:
    return set(torch.as_tensor(mask).unique().tolist()) <= {0.0, 1.0}


def test_lazy_resampling_raises_on_2d_zoom_and_rotate():
    """train.json's chain (flip at 0.5) through MONAI's Compose(lazy=True), eight slices: the
    slices whose flip does not fire raise MONAI's matrix-shape error; none may raise anything else.
    The same chain without lazy runs on every slice (the inputs are fine)."""
    lazy = Compose(_bundle_augmentations(), lazy=True)
    eager = Compose(_bundle_augmentations())
    errors = []
    for seed in range(8):
        lazy.set_random_state(seed=seed)
        try:
            lazy(_slice(seed))
        except RuntimeError as error:
            errors.append(str(error))
        eager.set_random_state(seed=seed)
        assert _is_binary(eager(_slice(seed))["label"])
    if not errors:
        pytest.fail(f"{SWITCH} {MASK_MODE}")
    assert all(MATMUL in e for e in errors), errors
    assert len(errors) < 8  # the slices whose flip fires run (see the next test)


def test_lazy_resampling_ignores_the_masks_nearest_mode():
    """With every transform firing, Compose(lazy=True) runs but resamples the mask bilinearly
    (its "nearest-exact"/"nearest" modes are not applied); overriding the mask's mode keeps it 0/1."""
    for seed in range(3):
        plain = Compose(_bundle_augmentations(flip_prob=1.0), lazy=True)
        plain.set_random_state(seed=seed)
        mask = plain(_slice(seed))["label"]
        if _is_binary(mask):
            pytest.fail(
                "MONAI's lazy resampling now keeps the mask's nearest mode: no overrides are needed "
                f"when switching to it; see test_lazy_resampling_raises_on_2d_zoom_and_rotate. {SWITCH}"
            )
        overridden = Compose(
            _bundle_augmentations(flip_prob=1.0), lazy=True, overrides={"label": {"mode": "nearest"}}
        )
        overridden.set_random_state(seed=seed)
        assert _is_binary(overridden(_slice(seed))["label"])
