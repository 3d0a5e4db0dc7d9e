"""Binarise lesion masks stored as 0/255 images into float32 {0, 1} targets."""

from __future__ import annotations

import math
import warnings
from collections.abc import Hashable, Mapping
from numbers import Real

import numpy as np
import torch
from monai.config import KeysCollection, NdarrayOrTensor
from monai.transforms import MapTransform

__all__ = ["LesionMaskd", "lesion_mask"]


def _check_threshold(threshold: float) -> float:
    if isinstance(threshold, bool) or not isinstance(threshold, Real) or not math.isfinite(threshold):
        raise ValueError(f"threshold must be a finite number, not {threshold!r}")
    return float(threshold)


def lesion_mask(x: NdarrayOrTensor, threshold: float = 127) -> NdarrayOrTensor:
    """Binarise a mask: 1.0 where ``x > threshold``, else 0.0, as float32.

    A MetaTensor stays a MetaTensor with its metadata, a tensor stays on its device and a
    numpy array stays a numpy array. A mask whose nonzero values all lie at or below the
    threshold (e.g. one stored as 0/1 with the default threshold) would become empty, so
    that case warns.

    Args:
        x: the mask, any shape (typically (1, H, W) uint8 with values 0 and 255).
        threshold: values strictly above it are lesion. Defaults to 127.

    Returns:
        The float32 {0, 1} mask, same shape and type as ``x``.

    Raises:
        ValueError: ``threshold`` is not a finite number.
    """
    threshold = _check_threshold(threshold)
    if isinstance(x, torch.Tensor):
        out = (x > threshold).to(torch.float32)
        empty_but_nonzero = not bool(out.any()) and bool((x != 0).any())
    else:
        x = np.asarray(x)
        out = (x > threshold).astype(np.float32)
        empty_but_nonzero = not out.any() and bool(np.any(x != 0))
    if empty_but_nonzero:
        warnings.warn(
            f"lesion_mask: the mask has nonzero values but none above threshold={threshold:g} "
            f"(max {float(x.max()):g}), so it became empty; masks are expected as 0/255, "
            "set threshold=0 for masks stored as 0/1",
            stacklevel=2,
        )
    return out


class LesionMaskd(MapTransform):
    """Dictionary wrapper of :func:`lesion_mask`: 0/255 masks become float32 {0, 1}.

    Args:
        keys: keys of the masks to binarise.
        threshold: values strictly above it are lesion. Defaults to 127.
        allow_missing_keys: don't raise an error if a key is missing. Defaults to False.

    Raises:
        ValueError: ``threshold`` is not a finite number.
    """

    def __init__(
        self, keys: KeysCollection, threshold: float = 127, allow_missing_keys: bool = False
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.threshold = _check_threshold(threshold)

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = lesion_mask(d[key], self.threshold)
        return d
