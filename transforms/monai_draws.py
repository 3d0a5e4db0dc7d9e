"""What MONAI's RandZoomd, RandRotated and RandFlipd are set to and what they drew.

:class:`transforms.FusedAugmentation` reproduces these transforms from their random parameters
and a few settings that MONAI 1.6.1 keeps outside its documented API: whether a transform fires
(``RandomizableTransform._do_transform``), the zoom factors (``RandZoom._zoom``), the angle
(``RandRotate.x``), and the settings of the array transforms inside the dictionary ones
(``RandZoomd.rand_zoom``, ``RandRotated.rand_rotate``, ``RandFlipd.flipper``). These MONAI
internals are read here only, one function per transform and question;
tests/transforms/test_monai_draws.py checks every value read here against MONAI's own output
(the drawn parameters fed to MONAI's deterministic Zoom, Rotate and Flip reproduce the random
transform's result), so a MONAI release that renames or redefines one fails there first.

The ``draw_*`` functions draw through the transform's own ``randomize`` methods, in the order its
``__call__`` draws, so seeds, ``set_random_state`` and resumed runs mean what they mean for MONAI.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from monai.transforms import RandFlipd, RandRotated, RandZoomd

__all__ = [
    "draw_flip",
    "draw_rotate",
    "draw_zoom",
    "flip_axes",
    "rotate_keeps_size",
    "zoom_keeps_size",
    "zoom_pad_options",
]


def zoom_keeps_size(transform: RandZoomd) -> bool:
    """Whether ``transform`` crops or pads its output back to the input size (``keep_size``)."""
    return bool(transform.rand_zoom.keep_size)


def zoom_pad_options(transform: RandZoomd) -> dict[str, Any]:
    """The extra ``np.pad`` options of ``transform`` (e.g. a constant value); empty by default."""
    return dict(transform.rand_zoom.kwargs)


def rotate_keeps_size(transform: RandRotated) -> bool:
    """Whether ``transform`` keeps the input size (``keep_size``) rather than growing to fit."""
    return bool(transform.rand_rotate.keep_size)


def flip_axes(transform: RandFlipd) -> list[int]:
    """The spatial axes (0 = H, 1 = W) that ``transform`` reverses when it fires (2-D slices)."""
    axis = transform.flipper.spatial_axis
    if axis is None:
        return [0, 1]
    return [int(a) % 2 for a in np.atleast_1d(axis)]


def draw_zoom(transform: RandZoomd, data: Mapping[Any, Any], key: Any) -> tuple[float, ...] | None:
    """Draw as ``RandZoomd.__call__`` does; the zoom factors per spatial axis, or None when it
    does not fire.

    Args:
        transform: MONAI's RandZoomd.
        data: the item; ``data[key]`` is the array whose spatial rank the factors follow.
        key: the transform's first key (MONAI draws with it).
    """
    transform.randomize(None)
    transform.rand_zoom.randomize(data[key])
    if not transform._do_transform:
        return None
    return tuple(float(z) for z in transform.rand_zoom._zoom)


def draw_rotate(transform: RandRotated) -> float | None:
    """Draw as ``RandRotated.__call__`` does; the angle in radians (2-D), or None when it does
    not fire."""
    transform.randomize(None)
    transform.rand_rotate.randomize()
    if not transform._do_transform:
        return None
    return float(transform.rand_rotate.x)


def draw_flip(transform: RandFlipd) -> list[int] | None:
    """Draw as ``RandFlipd.__call__`` does; :func:`flip_axes`, or None when it does not fire."""
    transform.randomize(None)
    return flip_axes(transform) if transform._do_transform else None
