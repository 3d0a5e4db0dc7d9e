"""The deterministic preprocessing, defined once: ``deterministic_transforms`` of train.json.

Training and evaluation use that chain directly (evaluate.json overlays train.json). Inference
(``inference.json``'s ``preprocessing`` and :func:`image_preprocessing`) builds it from the same
config, on images without masks (the chain's transforms allow a missing ``label``); the exported
bundle does the same with its own copy of this code (``scripts/``) and of the run's train.json.
So a change there reaches all four.

The chain is read from a training config: the merged ``config.json`` of a training run, so that a
model is prepared as it was trained; without one (a bare state dict), bundle/configs/train.json
with the tutorial's options (:data:`CONFIGLESS_OPTIONS`: per-slice min-max, no crop), which is
how every model saved before these options was trained.

The chain holds both intensity options (train.json's ``intensity``), the unused one disabled with
MONAI's ``_disabled_``. With ``"volume"`` the image is scaled by bounds the record carries
(``transforms.ScaleIntensityByRecordd``): inference passes ``{"image": slice, "intensity":
pipeline.data.volume_stats.volume_bounds(volume)}`` (:func:`bounds_key` says whether and under which
key a built chain wants them). Likewise train.json's ``crop``: with ``"head"`` the chain crops to a
box the record carries (``transforms.HeadCropd``): inference passes ``{"image": slice, "head_box":
pipeline.data.head_box.head_box(volume)}`` (:func:`box_key`), and maps the probabilities back
through the box (``transforms.uncrop``).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from monai.transforms import Compose

TRAIN_CONFIG = Path(__file__).resolve().parents[2] / "bundle" / "configs" / "train.json"
CHAIN = "deterministic_transforms"
LABEL = "label"
# top-level keys of train.json that the chain refers to (its _disabled_ flags)
OPTIONS = ("intensity", "crop")
# this project's transforms the exported bundle may hold: it vendors their code


# a model without its run config (a bare state dict: the tutorial's, or one saved before these
# options) was trained with the tutorial's chain: per-slice min-max, no crop, whatever train.json's
# defaults have become since (its network and image size are still train.json's)
CONFIGLESS_OPTIONS = {"intensity": "slice", "crop": "none"}


def _config(config: str | Path | Mapping | None) -> dict:
    if isinstance(config, Mapping):
        return dict(config)
    if config is None:
        return {**json.loads(TRAIN_CONFIG.read_text()), **CONFIGLESS_OPTIONS}
    path = Path(config)
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise ValueError(
            f"cannot read the training config {path} ({error}); pass a train.json or a run's config.json"
        ) from None


def training_transforms(config: str | Path | Mapping | None = None) -> list[dict]:
    """A copy of the training config's ``deterministic_transforms`` (raw, unresolved).

    Args:
        config: a training config, as a path or a dict. Default None: bundle/configs/train.json.

    Raises:
        ValueError: the config cannot be read or has no ``deterministic_transforms`` list.
    """
    chain = _config(config).get(CHAIN)
    if not isinstance(chain, list):
        raise ValueError(f"the training config has no {CHAIN!r} list (got {type(chain).__name__})")
    return copy.deepcopy(chain)


def image_preprocessing(image_size: int = 256, config: str | Path | Mapping | None = None) -> Compose:
    """The training chain for an image file without mask: ``{"image": path}`` -> (C, size, size).

    Args:
        image_size: side of the square the network sees. Default 256.
        config: the training config the chain is read from. Default None: train.json with
            :data:`CONFIGLESS_OPTIONS` (a model without its run config).

    Raises:
        ValueError: ``image_size`` is not a positive integer, or the config is unusable.
    """
    from monai.bundle import ConfigParser

    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise ValueError(f"image_size must be a positive integer, not {image_size!r}")
    raw = _config(config)
    parser = ConfigParser({**_options(raw), "image_size": image_size, CHAIN: training_transforms(raw)})
    return Compose(parser.get_parsed_content(CHAIN))


def _options(raw: Mapping) -> dict:
    """The imports and the :data:`OPTIONS` of a training config (their defaults where absent: configs
    written before them).

    Raises:
        ValueError: ``intensity`` is not "slice" or "volume", or ``crop`` not "none" or "head"
            (naming the key and the values).
    """
    # absent (a config written before the option): its default, which the chain then refers to
    return {"imports": raw.get("imports", []), "intensity": intensity_of(raw), "crop": crop_of(raw)}


def _disabled(raw: Mapping, flag: Any) -> bool:
    """A ``_disabled_`` value evaluated as MONAI does (an expression may use :data:`OPTIONS`)."""
    from monai.bundle import ConfigParser

    value = ConfigParser({**_options(raw), "flag": flag}).get_parsed_content("flag")
    return value.lower().strip() == "true" if isinstance(value, str) else bool(value)


def active_transforms(config: str | Path | Mapping | None = None) -> list[dict]:
    """The raw chain without the transforms its ``_disabled_`` flags switch off, flags removed.

    Raises:
        ValueError: as :func:`training_transforms`, or an option the flags check is invalid
            (e.g. ``intensity`` not "slice" or "volume").
    """
    raw = _config(config)
    out = []
    for transform in training_transforms(raw):
        if isinstance(transform, Mapping) and "_disabled_" in transform:
            if _disabled(raw, transform["_disabled_"]):
                continue
            transform = {k: v for k, v in transform.items() if k not in ("_disabled_", "_desc_")}
        out.append(transform)
    return out


def intensity_of(config: str | Path | Mapping | None = None) -> str:
    """The training config's ``intensity`` option: "slice" (also for configs written before it) or "volume".

    Raises:
        ValueError: the value is neither.
    """
    from transforms.intensity import intensity_option

    return intensity_option(_config(config).get("intensity", "slice"))


def crop_of(config: str | Path | Mapping | None = None) -> str:
    """The training config's ``crop`` option: "none" (also for configs written before it) or "head".

    Raises:
        ValueError: the value is neither.
    """
    from transforms.crop import crop_option

    return crop_option(_config(config).get("crop", "none"))


def box_key(transform: Any) -> str | None:
    """The record key a built chain reads the head box from (crop "head"); None when it crops nothing.

    Args:
        transform: a transform or a Compose (searched recursively), e.g. :func:`image_preprocessing`.
    """
    from transforms.crop import HeadCropd

    if isinstance(transform, HeadCropd):
        return transform.box_key
    for inner in getattr(transform, "transforms", None) or ():
        found = box_key(inner)
        if found is not None:
            return found
    return None


def bounds_key(transform: Any) -> str | None:
    """The record key a built chain reads per-volume intensity bounds from; None when it needs none.

    Args:
        transform: a transform or a Compose (searched recursively), e.g. :func:`image_preprocessing`.
    """
    from transforms.intensity import ScaleIntensityByRecordd

    if isinstance(transform, ScaleIntensityByRecordd):
        return transform.bounds_key
    for inner in getattr(transform, "transforms", None) or ():
        found = bounds_key(inner)
        if found is not None:
            return found
    return None
