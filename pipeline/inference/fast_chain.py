"""The bundle's preprocessing of one slice, computed in a few tensor operations instead of MONAI's chain.

Why: training caches its deterministic chain once per slice, but inference meets every slice
once, and at the demo size MONAI's ``ScaleIntensityd`` and ``Resized(mode="area")`` on a
3 x 256 x 256 slice cost about 2 ms of CPU (type conversions, metadata, a generic adaptive
pooling), half a forward pass of the demo network. This module recognises the chain of
train.json (LoadImaged with this project's TiffReader, EnsureChannelFirstd, ScaleIntensityd to
[0, 1] or ScaleIntensityByRecordd, LesionMaskd, Resized with "area" for the image, EnsureTyped
to float32) and computes the same numbers:

- "area" resizing by an integer factor is the mean of each k x k block, summed by strided adds in
  float32 (exact for 8-bit slices), or for a uint8 slice (a TIFF's) in uint16 on a contiguous
  copy, converted to float32 after (the same numbers, faster); other sizes use torch's adaptive
  average pooling, as MONAI does.
- Min-max scaling is affine and the area mean is linear, so scaling by the full slice's min and
  max after the mean equals scaling before it. The min and max are those of the full-resolution
  slice, as in the chain.
- "volume" intensity (ScaleIntensityByRecordd) is applied after the resize with the very function
  the transform uses (:func:`transforms.intensity.scale_by_bounds`).
- crop "head" (``transforms.HeadCropd`` before the resize, the record's box): the raw slice is
  cropped with :func:`transforms.crop.crop_to_box`; where the box leaves the image the chain pads
  zeros after the min-max scaling, so the raw crop pads the slice's minimum (0 once scaled), or
  zeros before the per-volume scaling, as that chain does. The steps of the chain that touch only
  the label (LesionMaskd, the uncropped label's copy, resize and type) are no-ops on an image.

Any other chain (another transform, option or order, a config of a user's own) gets ``None``
from :func:`fast_slice_chain` and runs through MONAI as before. A test compares both on slices
of several sizes and dtypes (equal within 1e-6).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from monai.transforms import (
    Compose,
    CopyItemsd,
    EnsureChannelFirstd,
    EnsureTyped,
    LoadImaged,
    Resized,
    ScaleIntensityd,
)

import transforms
from transforms.crop import HeadCropd, crop_to_box
from transforms.intensity import ScaleIntensityByRecordd, scale_by_bounds
from transforms.reader import read_tiff

__all__ = ["FastSliceChain", "fast_slice_chain"]


def _area(image: np.ndarray, side: int) -> torch.Tensor:
    """(C, H, W) -> (C, side, side) float32 by area averaging: block means (average pooling) for an
    integer factor, torch's adaptive average pooling (MONAI's "area") otherwise. The block sums of
    8-bit slices are exact in float32, and so is their division by 4."""
    tensor = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None]
    height, width = tensor.shape[-2:]
    if height % side == 0 and width % side == 0:
        if height == width == side:
            return tensor[0]
        kh, kw = height // side, width // side
        total = sum(tensor[0, :, i::kh, j::kw] for i in range(kh) for j in range(kw))
        return total / float(kh * kw)  # a few strided adds: faster than avg_pool2d here
    return torch.nn.functional.adaptive_avg_pool2d(tensor, (side, side))[0]


def _area_uint8(image: np.ndarray, side: int) -> tuple[torch.Tensor, np.ndarray] | None:
    """:func:`_area` of a (C, H, W) uint8 array by an integer factor, and the array made
    contiguous (for its min and max); None for another dtype, shape or factor. The block sums are
    taken in uint16 on a contiguous uint8 copy (the rows: contiguous adds; then the columns) and
    only the small result is converted to float32: the sums are exact, so the numbers are
    :func:`_area`'s, in about 60% of its time on a TIFF slice."""
    channels, height, width = image.shape
    if image.dtype != np.uint8 or height % side or width % side:
        return None
    kh, kw = height // side, width // side
    if kh * kw > 257:  # 255 * kh * kw must fit in uint16
        return None
    stored = np.ascontiguousarray(image)
    rows = stored.reshape(channels, side, kh, width)
    summed = rows[:, :, 0]
    for i in range(1, kh):
        summed = np.add(summed, rows[:, :, i], dtype=np.uint16)
    blocks = summed.reshape(channels, side, side, kw)
    total = blocks[..., 0]
    for j in range(1, kw):
        total = np.add(total, blocks[..., j], dtype=np.uint16)
    resized = torch.from_numpy(total.astype(np.float32))
    return (resized / float(kh * kw) if kh * kw > 1 else resized), stored


def _resize(image: np.ndarray, side: int) -> torch.Tensor:
    """:func:`_area_uint8` where it applies (a uint8 slice by an integer factor), else :func:`_area`."""
    fast = _area_uint8(image, side)
    return fast[0] if fast is not None else _area(image, side)


class FastSliceChain:
    """The recognised chain as one function: ``{"image": (C, H, W) array}`` -> ``{"image": tensor}``.

    Args:
        side: the ``Resized`` spatial size (square).
        scale: "slice" (ScaleIntensityd to [0, 1] before the resize) or "volume"
            (ScaleIntensityByRecordd after it).
        bounds_key: the record key of the volume bounds ("volume" only).
        box_key: the record key of the head box (crop "head"); None: no crop.
    """

    def __init__(
        self, side: int, scale: str, bounds_key: str | None = None, box_key: str | None = None
    ) -> None:
        if scale not in ("slice", "volume"):
            raise ValueError(f"scale must be 'slice' or 'volume', not {scale!r}")
        self.side, self.scale, self.bounds_key, self.box_key = int(side), scale, bounds_key, box_key

    def image(
        self, image: Any, bounds: Sequence[Sequence[float]] | None = None, box: Sequence[int] | None = None
    ) -> torch.Tensor:
        array = image.numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
        if self.scale == "volume":
            cropped = array if box is None else crop_to_box(array, box)
            return torch.as_tensor(
                scale_by_bounds(_resize(cropped, self.side), bounds), dtype=torch.float32
            ).contiguous()
        low, high = float(array.min()), float(array.max())
        resized = _resize(array if box is None else crop_to_box(array, box, fill=low), self.side)
        if low == high:
            return torch.zeros(resized.shape, dtype=torch.float32)
        return (resized - low) / (high - low)

    def __call__(self, record: dict) -> dict:
        bounds = record.get(self.bounds_key) if self.bounds_key else None
        box = record[self.box_key] if self.box_key else None
        return {**record, "image": self.image(record["image"], bounds, box)}

    def read_tiff(self, path: str) -> tuple[np.ndarray, int, int]:
        """A kaggle TIFF slice as LoadImaged(TiffReader) + EnsureChannelFirstd give it: (C, H, W)."""
        array, axes = read_tiff(path)
        channel = axes.find("S")
        array = array[None] if channel < 0 else np.moveaxis(array, channel, 0)
        return array, array.shape[1], array.shape[2]


def _keys(transform: Any) -> tuple:
    return tuple(getattr(transform, "keys", ()))


def _per_key(transform: Any, name: str, key: str = "image") -> Any:
    values = getattr(transform, name)
    return values[_keys(transform).index(key)] if isinstance(values, Sequence) else values


def _area_side(transform: Any) -> int | None:
    """The side of a square ``Resized`` of the image with plain "area" mode; None for any other."""
    if not isinstance(transform, Resized) or "image" not in _keys(transform):
        return None
    resizer, size = transform.resizer, transform.resizer.spatial_size
    plain = (
        str(_per_key(transform, "mode")) == "area"
        and not _per_key(transform, "anti_aliasing")
        and _per_key(transform, "dtype") in (np.float32, torch.float32)
        and resizer.size_mode == "all"
    )
    if not plain or not isinstance(size, Sequence) or len(size) != 2 or size[0] != size[1]:
        return None
    return int(size[0])


def _float32(transform: Any) -> bool:
    return isinstance(transform, EnsureTyped) and _per_key(transform, "dtype") == torch.float32


def _tiff_loading(load: Compose) -> bool:
    """LoadImaged with this project's TiffReader first in line, no dtype, then EnsureChannelFirstd."""
    steps = list(load.transforms)
    if (
        len(steps) != 2
        or not isinstance(steps[0], LoadImaged)
        or not isinstance(steps[1], EnsureChannelFirstd)
    ):
        return False
    loader = steps[0]._loader
    readers = getattr(loader, "readers", [])
    return bool(readers) and isinstance(readers[-1], transforms.TiffReader) and loader.dtype is None


def fast_slice_chain(load: Compose | None, chain: Compose) -> FastSliceChain | None:
    """A :class:`FastSliceChain` for ``load`` (TIFF loading) + ``chain`` (the slice transforms) when
    they are train.json's (see the module docstring), else None.

    Args:
        load: the chain's loading transforms (LoadImaged, EnsureChannelFirstd), or None for volume
            slices (arrays already in memory).
        chain: the rest, e.g. :class:`transforms.ComposeWithoutMeta`.
    """
    if load is not None and not _tiff_loading(load):
        return None
    steps = [t for t in list(getattr(chain, "transforms", None) or [None]) if not _label_only(t)]
    box_key = None
    crops = [k for k, t in enumerate(steps) if isinstance(t, HeadCropd)]
    if len(crops) == 1 and _keys(steps[crops[0]]) == ("image", "label"):
        box_key = steps[crops[0]].box_key  # cropped right before the resize (checked below)
        after = steps[crops[0] + 1 :][:1]
        steps = steps[: crops[0]] + steps[crops[0] + 1 :]
        if not after or _area_side(after[0]) is None:
            return None
    elif crops:
        return None
    if len(steps) != 3 or not _float32(steps[2]):
        return None
    first, second = steps[0], steps[1]
    if isinstance(first, ScaleIntensityd) and _keys(first) == ("image",):
        scaler = first.scaler
        exact = (scaler.minv, scaler.maxv, scaler.factor, scaler.channel_wise) == (0.0, 1.0, None, False)
        side = _area_side(second)
        if exact and side is not None and scaler.dtype in (np.float32, torch.float32):
            return FastSliceChain(side, "slice", box_key=box_key)
    if isinstance(second, ScaleIntensityByRecordd) and _keys(second) == ("image",):
        side = _area_side(first)
        if side is not None:
            return FastSliceChain(side, "volume", second.bounds_key, box_key)
    return None


def _label_only(transform: Any) -> bool:
    """A step that reads and writes no image (a no-op on an image record): LesionMaskd, and crop
    "head"'s copy of the label, its resize and its type (MONAI's CopyItemsd, Resized, EnsureTyped)."""
    keys = _keys(transform)
    if "image" in keys or not keys:
        return False
    if isinstance(transform, CopyItemsd):
        return "image" not in tuple(transform.names)
    return isinstance(transform, transforms.LesionMaskd | Resized | EnsureTyped)
