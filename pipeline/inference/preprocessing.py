"""The deterministic preprocessing, defined once: ``deterministic_transforms`` of train.json.

Training and evaluation use that chain directly (evaluate.json overlays train.json). The others
are built from it, so that a change there reaches all four:

- inference (``inference.json``'s ``preprocessing`` and :func:`image_preprocessing`): the same
  chain, on images without masks (the chain's transforms allow a missing ``label``);
- the exported bundle (:func:`standalone_transforms`): the same chain rewritten for MONAI alone.

The chain is read from a training config: bundle/configs/train.json by default, or the merged
``config.json`` of a training run, so that a model is prepared as it was trained.

The chain holds both intensity options (train.json's ``intensity``), the unused one disabled with
MONAI's ``_disabled_``. With ``"volume"`` the image is scaled by bounds the record carries
(``transforms.ScaleIntensityByRecordd``): inference passes ``{"image": slice, "intensity":
pipeline.data.volume_stats.volume_bounds(volume)}`` (:func:`bounds_key` says whether and under which
key a built chain wants them).
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
OPTIONS = ("intensity",)
# this project's transforms the exported bundle may hold: it vendors their code
VENDORED = ("transforms.ScaleIntensityByRecordd",)


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
    parser = ConfigParser({**_options(raw), "image_size": image_size, CHAIN: training_transforms(raw)})
    return Compose(parser.get_parsed_content(CHAIN))


def _options(raw: Mapping) -> dict:
    """The imports and the :data:`OPTIONS` of a training config (absent in configs written before them).

    Raises:
        ValueError: ``intensity`` is not "slice" or "volume" (naming the key and the values).
    """
    intensity_of(raw)
    return {"imports": raw.get("imports", []), **{k: raw[k] for k in OPTIONS if k in raw}}


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
    Transforms the config disables (``_disabled_``) are left out. With intensity "volume" the
    chain holds ``transforms.ScaleIntensityByRecordd`` (:data:`VENDORED`: the bundle ships its
    code), and the bundle's records must carry the patient's ``"intensity"`` bounds.

    Raises:
        ValueError: the chain holds another transform of this project (``transforms.*``) on the
            image, which a bundle without this repository cannot run.
    """
    out: list[dict] = []
    for transform in active_transforms(config):
        keys = [k for k in _keys(transform) if k != LABEL]
        if not keys:
            continue
        target = str(transform.get("_target_", ""))
        if target.startswith("transforms.") and target not in VENDORED:
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
