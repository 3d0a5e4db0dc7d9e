"""The deterministic preprocessing, defined once: ``deterministic_transforms`` of train.json.

Training and evaluation use that chain directly (evaluate.json overlays train.json). The others
are built from it, so that a change there reaches all four:

- inference (``inference.json``'s ``preprocessing`` and :func:`image_preprocessing`): the same
  chain, on images without masks (the chain's transforms allow a missing ``label``);
- the exported bundle (:func:`standalone_transforms`): the same chain rewritten for MONAI alone.

The chain is read from a training config: bundle/configs/train.json by default, or the merged
``config.json`` of a training run, so that a model is prepared as it was trained.
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


def _config(config: str | Path | Mapping | None) -> dict:
    if isinstance(config, Mapping):
        return dict(config)
    path = Path(config) if config is not None else TRAIN_CONFIG
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
        config: the training config the chain is read from. Default None: train.json.

    Raises:
        ValueError: ``image_size`` is not a positive integer, or the config is unusable.
    """
    from monai.bundle import ConfigParser

    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise ValueError(f"image_size must be a positive integer, not {image_size!r}")
    raw = _config(config)
    parser = ConfigParser(
        {"imports": raw.get("imports", []), "image_size": image_size, CHAIN: training_transforms(raw)}
    )
    return Compose(parser.get_parsed_content(CHAIN))


def _keys(transform: Mapping) -> list[str]:
    keys = transform.get("keys", [])
    return [keys] if isinstance(keys, str) else list(keys)


def _for_keys(transform: dict, keep: list[str], extra: Mapping[str, Any] | None = None) -> dict:
    """``transform`` restricted to the keys ``keep`` (per-key lists reduced alike), plus ``extra``
    keys with their own per-key values (``{key: {argument: value}}``)."""
    keys = _keys(transform)
    out = {}
    for name, value in transform.items():
        if (
            name == "keys"
            or name == "spatial_size"
            or not (isinstance(value, list) and len(value) == len(keys))
        ):
            out[name] = value
        else:
            out[name] = [value[keys.index(k)] for k in keep]
    out["keys"] = list(keep)
    for key, values in (extra or {}).items():
        out["keys"].append(key)
        for name, value in values.items():
            before, n = out.get(name), len(out["keys"]) - 1
            out[name] = [*(before if isinstance(before, list) and len(before) == n else [before] * n), value]
    return out


def standalone_transforms(config: str | Path | Mapping | None = None) -> list[dict]:
    """The training chain as a config that needs MONAI and torch only (the exported bundle's).

    From the training chain: transforms of the mask only are dropped and the mask key removed;
    the TIFF reader becomes MONAI's ``PILReader`` with ``reverse_indexing=False`` (rows stay
    rows, as in tifffile); a copy of the loaded image, ``geometry``, is taken and resized with
    the image (bilinear), so that ``Invertd`` can map probabilities back to the slice's size.

    Raises:
        ValueError: the chain holds a transform of this project (``transforms.*``) on the
            image, which a bundle without this repository cannot run.
    """
    out: list[dict] = []
    for transform in training_transforms(config):
        keys = [k for k in _keys(transform) if k != LABEL]
        if not keys:
            continue
        target = str(transform.get("_target_", ""))
        if target.startswith("transforms."):
            raise ValueError(
                f"{target} in {CHAIN} is this project's own transform; the exported bundle runs on "
                "MONAI alone: use MONAI transforms on the image in train.json's chain"
            )
        transform = _for_keys(transform, keys)
        transform.pop("allow_missing_keys", None)
        if target == "LoadImaged":
            transform.update(reader="PILReader", reverse_indexing=False)
        if target == "Resized":
            transform = _for_keys(transform, keys, {"geometry": {"mode": "bilinear"}})
        out.append(transform)
        if target == "EnsureChannelFirstd":
            out.append({"_target_": "CopyItemsd", "keys": "image", "names": "geometry"})
    return out
