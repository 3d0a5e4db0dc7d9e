"""Intensity scaling by bounds carried in the record: the recipe's per-volume option.

train.json's ``intensity`` chooses how a slice's intensities reach [0, 1]:

- ``"slice"`` (the tutorial's, the default): MONAI's ``ScaleIntensityd``, min-max over the slice,
  all channels together, so a slice without lesion is stretched until its brightest tissue is 1.
- ``"volume"``: :class:`ScaleIntensityByRecordd`, each channel clipped to bounds ``[lo, hi]`` of
  its patient's whole volume and scaled to [0, 1]; the bounds travel in the record (key
  ``"intensity"``, computed by :mod:`pipeline.data.volume_stats`), so every slice of a patient
  gets the same mapping.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection, NdarrayOrTensor
from monai.transforms import MapTransform

__all__ = ["INTENSITY_OPTIONS", "ScaleIntensityByRecordd", "intensity_option", "scale_by_bounds"]

INTENSITY_OPTIONS = ("slice", "volume")
_EXPLAINED = (
    "'slice' (min-max over each slice, the tutorial's) or 'volume' (per patient and channel, "
    "clipped to the volume's percentile bounds)"
)


def intensity_option(value: Any) -> str:
    """``value`` when it is one of :data:`INTENSITY_OPTIONS`, else a ValueError naming the key.

    Raises:
        ValueError: ``value`` is not ``"slice"`` or ``"volume"``.
    """
    if not isinstance(value, str) or value not in INTENSITY_OPTIONS:
        raise ValueError(
            f"intensity must be {_EXPLAINED}, not {value!r}: set the key 'intensity' of train.json "
            "(--intensity slice or --intensity volume)"
        )
    return value


def _checked_bounds(bounds: Any, channels: int) -> list[tuple[float, float]]:
    try:
        pairs = [(float(lo), float(hi)) for lo, hi in bounds]
    except (TypeError, ValueError):
        raise ValueError(f"intensity bounds must be one [lo, hi] pair per channel, got {bounds!r}") from None
    if len(pairs) != channels:
        raise ValueError(
            f"intensity bounds hold {len(pairs)} [lo, hi] pairs for an image of {channels} channels: "
            "expected one pair per channel (pipeline.data.volume_stats.volume_bounds of the volume)"
        )
    for c, (lo, hi) in enumerate(pairs):
        if not (math.isfinite(lo) and math.isfinite(hi)) or hi < lo:
            raise ValueError(
                f"intensity bounds of channel {c} must be finite with lo <= hi, got [{lo}, {hi}]"
            )
    return pairs


def scale_by_bounds(x: NdarrayOrTensor, bounds: Sequence[Sequence[float]]) -> NdarrayOrTensor:
    """Channel c clipped to ``[lo_c, hi_c]`` and scaled to [0, 1]: ``clip((x - lo) / (hi - lo), 0, 1)``.

    A channel with ``hi == lo`` (a flat volume) becomes 0, as MONAI's min-max scaling does with a
    flat image. The output is float32, of the input's type (numpy array, tensor on its device,
    MetaTensor with its metadata).

    Args:
        x: the image, channels first, (C, ...) of any numeric dtype.
        bounds: C pairs ``[lo, hi]``.

    Raises:
        ValueError: the bounds are not C finite pairs with ``lo <= hi``.
    """
    pairs = _checked_bounds(bounds, int(x.shape[0]))
    shape = (len(pairs),) + (1,) * (x.ndim - 1)
    lo = np.array([p[0] for p in pairs], np.float32).reshape(shape)
    width = np.array([p[1] - p[0] for p in pairs], np.float32).reshape(shape)
    flat = width == 0
    width[flat] = 1.0
    if isinstance(x, torch.Tensor):
        x = x.to(torch.float32)
        out = ((x - torch.as_tensor(lo, device=x.device)) / torch.as_tensor(width, device=x.device)).clamp(
            0, 1
        )
        return out * torch.as_tensor(~flat, dtype=torch.float32, device=x.device)
    out = np.clip((np.asarray(x, np.float32) - lo) / width, 0, 1)
    return (out * ~flat).astype(np.float32, copy=False)


class ScaleIntensityByRecordd(MapTransform):
    """Scale each channel of ``keys`` to [0, 1] by the bounds in the record's ``bounds_key``.

    ``d[key] = scale_by_bounds(d[key], d[bounds_key])``; the bounds stay in the record.

    Args:
        keys: the images to scale (channels first).
        bounds_key: the record key holding one ``[lo, hi]`` per channel. Default ``"intensity"``.
        allow_missing_keys: don't raise when an image key is missing. Default False. A missing
            ``bounds_key`` is always an error.
    """

    def __init__(
        self, keys: KeysCollection, bounds_key: str = "intensity", allow_missing_keys: bool = False
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.bounds_key = bounds_key

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        keys = list(self.key_iterator(d))
        if keys and self.bounds_key not in d:
            raise KeyError(
                f"the record has no {self.bounds_key!r} bounds, which intensity 'volume' scales by: "
                "training records get them from prepare_data(intensity='volume'); at inference pass "
                f"{{'image': slice, {self.bounds_key!r}: pipeline.data.volume_stats.volume_bounds(volume)}}"
            )
        for key in keys:
            d[key] = scale_by_bounds(d[key], d[self.bounds_key])
        return d
