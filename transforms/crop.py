"""The head crop of train.json's ``crop: "head"`` option, and its inverse for the predictions.

train.json's ``crop`` chooses the in-plane field of view the network sees:

- ``"none"`` (the default, the tutorial's): the whole slice resized to ``image_size``.
- ``"head"`` (Buda et al.'s): each slice cropped to its patient's head box (one square box per
  patient, :mod:`pipeline.data.head_box`, carried in the record under ``"head_box"``), zero-padded
  where the box reaches past the image, then resized to ``image_size``. :class:`HeadCropd` does the
  crop; :func:`uncrop` maps the network's probabilities back to the uncropped slice (bilinear,
  zero outside the box), at any target size: the slice's own (inference's masks) or ``image_size``
  (validation and evaluation, which compare in crop "none"'s frame, so Dice and false-positive
  voxel counts are comparable between the options). :class:`HeadUncropd` is that mapping as the
  evaluator's postprocessing.

Boxes are ``[top, left, bottom, right]`` pixels of the slice, half-open.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform

__all__ = [
    "CROP_OPTIONS",
    "HeadCropd",
    "HeadUncropd",
    "as_boxes",
    "crop_option",
    "crop_to_box",
    "uncrop",
]

CROP_OPTIONS = ("none", "head")
EPS = 1e-7  # probabilities clamped to [EPS, 1 - EPS] before a logit is taken again


def crop_option(value: Any) -> str:
    """``value`` when it is one of :data:`CROP_OPTIONS`, else a ValueError naming the key.

    Raises:
        ValueError: ``value`` is not ``"none"`` or ``"head"``.
    """
    if not isinstance(value, str) or value not in CROP_OPTIONS:
        raise ValueError(
            "crop must be 'none' (the whole slice, the tutorial's) or 'head' (each patient's slices "
            f"cropped to the box of its head, Buda et al.'s), not {value!r}: set the key 'crop' of "
            "train.json (--crop none or --crop head)"
        )
    return value


def as_boxes(value: Any) -> list[list[int]]:
    """Boxes as B lists of 4 ints, from one box (4 numbers), B boxes, a (B, 4) tensor, or the
    4 tensors of shape (B,) that collating B records' boxes gives.

    Raises:
        ValueError: not boxes of 4 numbers.
    """
    if (
        isinstance(value, (list, tuple))
        and len(value) == 4
        and all(isinstance(v, torch.Tensor) and v.ndim == 1 for v in value)
    ):
        value = torch.stack(list(value), dim=1)  # collated: 4 tensors of shape (B,)
    array = np.asarray(
        torch.as_tensor(value).cpu() if isinstance(value, torch.Tensor) else value, dtype=np.float64
    )
    if array.ndim == 1:
        array = array[None]
    if array.ndim != 2 or array.shape[1] != 4 or not np.all(np.isfinite(array)):
        raise ValueError(f"head boxes must be [top, left, bottom, right] each, got {value!r}")
    boxes = [[int(round(v)) for v in row] for row in array]
    for top, left, bottom, right in boxes:
        if bottom <= top or right <= left:
            raise ValueError(
                f"head box [{top}, {left}, {bottom}, {right}] is empty (bottom <= top or right <= left)"
            )
    return boxes


def crop_to_box(x: Any, box: Sequence[int], fill: float = 0.0) -> Any:
    """``x`` ((C, H, W) array or tensor) cropped to ``box``, ``fill`` (default 0) where the box
    leaves the image.

    The result is (C, bottom - top, right - left), of ``x``'s type and dtype (a MetaTensor becomes
    a plain tensor: the crop is not recorded as an invertible MONAI operation).
    """
    ((top, left, bottom, right),) = as_boxes(box)
    height, width = x.shape[-2:]
    if isinstance(x, torch.Tensor):
        x = x.as_tensor() if hasattr(x, "as_tensor") else x
        out = torch.full((*x.shape[:-2], bottom - top, right - left), fill, dtype=x.dtype, device=x.device)
    else:
        x = np.asarray(x)
        out = np.full((*x.shape[:-2], bottom - top, right - left), fill, dtype=x.dtype)
    r0, r1 = max(top, 0), min(bottom, height)
    c0, c1 = max(left, 0), min(right, width)
    if r1 > r0 and c1 > c0:
        out[..., r0 - top : r1 - top, c0 - left : c1 - left] = x[..., r0:r1, c0:c1]
    return out


class HeadCropd(MapTransform):
    """Crop ``keys`` ((C, H, W) each) to the record's ``box_key`` box (:func:`crop_to_box`).

    Also writes ``frame_key``: ``[H, W]``, the size of the slice before the crop, which
    :func:`uncrop` needs to map predictions back.

    Args:
        keys: the images and masks to crop.
        box_key: the record key of the box. Default ``"head_box"``.
        frame_key: where the uncropped size is written. Default ``"head_frame"``.
        allow_missing_keys: don't raise when a key is missing (inference has no label).
    """

    def __init__(
        self,
        keys: KeysCollection,
        box_key: str = "head_box",
        frame_key: str = "head_frame",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.box_key, self.frame_key = box_key, frame_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        keys = list(self.key_iterator(d))
        if keys and self.box_key not in d:
            raise KeyError(
                f"the record has no {self.box_key!r}, which crop 'head' crops to: training records get "
                "it from prepare_data(crop='head'); at inference pass "
                f"{{'image': slice, {self.box_key!r}: pipeline.data.head_box.head_box(volume)}}"
            )
        for key in keys:
            d.setdefault(self.frame_key, [int(s) for s in d[key].shape[-2:]])
            d[key] = crop_to_box(d[key], d[self.box_key])
        return d


def _sizes(value: Any, count: int) -> list[tuple[int, int]]:
    array = np.asarray(torch.stack(list(value), 1) if _collated(value) else value, dtype=np.int64)
    array = np.broadcast_to(array.reshape(-1, 2), (count, 2)) if array.size == 2 else array.reshape(count, 2)
    return [(int(h), int(w)) for h, w in array]


def _collated(value: Any) -> bool:
    return (
        isinstance(value, (list, tuple))
        and len(value) == 2
        and all(isinstance(v, torch.Tensor) and v.ndim == 1 for v in value)
    )


def uncrop(probs: torch.Tensor, boxes: Any, original_hw: Any, target_hw: Any) -> torch.Tensor:
    """Probabilities of cropped slices mapped back onto the uncropped slices, resized to ``target_hw``.

    Slice ``b``'s ``probs[b]`` (C, S, S) covers its box ``boxes[b]`` of an ``original_hw`` slice
    (resized from the box to S x S). Target pixel ``(u, v)`` of a ``target_hw`` frame has its centre
    at ``((u + 0.5) H / Ht, (v + 0.5) W / Wt)`` in the original slice (the convention of
    ``align_corners=False``), which is ``((y - top) S / (bottom - top), ...)`` in the crop; it is
    sampled there bilinearly (``grid_sample``, ``align_corners=False``, clamped at the crop's edge
    as ``interpolate`` is), and is 0 outside the box. With the box the whole slice this is
    ``interpolate(probs, target_hw, mode="bilinear", align_corners=False)``.

    Args:
        probs: (B, C, S, S) (or (B, C, Sh, Sw)) tensor, any device.
        boxes: B boxes (:func:`as_boxes`).
        original_hw: (H, W) of every slice, or B of them.
        target_hw: the output (Ht, Wt), or B of them (then all equal).

    Returns:
        (B, C, Ht, Wt) float32 on ``probs``' device.
    """
    probs = torch.as_tensor(probs)
    probs = probs.as_tensor() if hasattr(probs, "as_tensor") else probs
    probs = probs.to(torch.float32)
    count = probs.shape[0]
    box = torch.as_tensor(as_boxes(boxes), dtype=torch.float64)
    if box.shape[0] != count:
        raise ValueError(f"{box.shape[0]} boxes for {count} slices")
    original = torch.as_tensor(_sizes(original_hw, count), dtype=torch.float64)
    targets = set(_sizes(target_hw, count))
    if len(targets) != 1:
        raise ValueError(f"uncrop maps a batch onto one target size, got {sorted(targets)}")
    ((out_h, out_w),) = targets
    rows = (torch.arange(out_h, dtype=torch.float64) + 0.5)[None] * (original[:, :1] / out_h)  # (B, Ht)
    cols = (torch.arange(out_w, dtype=torch.float64) + 0.5)[None] * (original[:, 1:] / out_w)  # (B, Wt)
    y = 2 * (rows - box[:, :1]) / (box[:, 2:3] - box[:, :1]) - 1
    x = 2 * (cols - box[:, 1:2]) / (box[:, 3:4] - box[:, 1:2]) - 1
    grid = torch.stack(torch.broadcast_tensors(x[:, None, :], y[:, :, None]), dim=-1)  # (B, Ht, Wt, 2)
    inside = ((x.abs() <= 1)[:, None, :] & (y.abs() <= 1)[:, :, None])[:, None]
    sampled = torch.nn.functional.grid_sample(
        probs,
        grid.to(device=probs.device, dtype=torch.float32),
        mode="bilinear",
        padding_mode="border",
        align_corners=False,
    )
    return sampled * inside.to(device=probs.device, dtype=torch.float32)


class HeadUncropd(MapTransform):
    """The evaluator's postprocessing of crop "head": ``pred`` mapped back (:func:`uncrop`) onto the
    frame of the uncropped label, which replaces ``label``; ``image`` likewise (for the pictures).

    Per decollated item: ``pred`` (C, S, S), the record's box and frame (:class:`HeadCropd`), the
    uncropped label ``uncropped_key`` (1, S', S', resized as crop "none" resizes it) giving the
    target size. The first ``logit_channels`` channels of ``pred`` are logits (evaluate.json's
    inferer gives 2: plain and flip average): they are mapped as probabilities (sigmoid, then
    back to logits, clamped at :data:`EPS`); the rest are mapped as they are.

    Args:
        keys: the prediction keys. Default ``"pred"``.
        logit_channels: leading channels of ``pred`` that are logits. Default 0 (probabilities).
    """

    def __init__(
        self,
        keys: KeysCollection = "pred",
        logit_channels: int = 0,
        box_key: str = "head_box",
        frame_key: str = "head_frame",
        label_key: str = "label",
        uncropped_key: str = "label_uncropped",
        image_key: str | None = "image",
    ) -> None:
        super().__init__(keys)
        self.logit_channels = int(logit_channels)
        self.box_key, self.frame_key = box_key, frame_key
        self.label_key, self.uncropped_key, self.image_key = label_key, uncropped_key, image_key

    def _back(self, x: Any, d: Mapping, target: tuple[int, int], logits: int = 0) -> torch.Tensor:
        x = torch.as_tensor(x)
        x = (x.as_tensor() if hasattr(x, "as_tensor") else x).to(torch.float32)
        if logits:
            x = torch.cat([torch.sigmoid(x[:logits]), x[logits:]])
        out = uncrop(x[None], d[self.box_key], d[self.frame_key], target)[0]
        if logits:
            p = out[:logits].clamp(EPS, 1 - EPS)
            out = torch.cat([torch.log(p) - torch.log1p(-p), out[logits:]])
        return out

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for name in (self.box_key, self.frame_key, self.uncropped_key):
            if name not in d:
                raise KeyError(
                    f"HeadUncropd needs {name!r} in each item: the chain of crop 'head' (train.json's "
                    "deterministic_transforms with crop head) writes it"
                )
        label = d[self.uncropped_key]
        target = tuple(int(s) for s in label.shape[-2:])
        for key in self.key_iterator(d):
            d[key] = self._back(d[key], d, target, self.logit_channels)
        d[self.label_key] = label
        if self.image_key is not None and self.image_key in d:
            d[self.image_key] = self._back(d[self.image_key], d, target)
        return d
