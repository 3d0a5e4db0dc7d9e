"""A batch of the network's probabilities to per-slice masks (and FLAIR thumbnails), in one go.

The per-slice rule of :class:`pipeline.inference.writers.MaskWriter`: probabilities resized back
to the slice's shape (bilinear, ``align_corners=False``), lesion where above the threshold. Done
here for a whole batch at once, one resize and one comparison per group of equally sized slices
instead of one per slice: at the demo size the per-slice calls cost a fifth of a forward pass.

With train.json's ``crop`` "head" the network saw each slice's head box, not the slice: the
probabilities are mapped back through the box instead (``transforms.uncrop``: bilinear, zero
outside the box; with the box the whole slice it is the same resize), and the FLAIR thumbnails
through it onto the network's frame of an uncropped slice (:func:`uncropped_flairs`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from transforms.crop import as_boxes, uncrop

__all__ = ["BOX_KEY", "batch_masks", "batch_thumbnails", "engine_batch", "uncropped_flairs"]

BOX_KEY = "head_box"  # the key SliceDataset's items carry the head box under (crop "head")


def engine_batch(batch: Any, output: Any) -> tuple[list, list, Any, list, list, Any, list, Any]:
    """An evaluator's batch and output as :meth:`MaskWriter.add_batch`'s arguments: input indices,
    slice positions, probabilities, heights, widths, FLAIR channels (None without images), errors,
    head boxes (None without crop "head").

    Both forms: the collated batch dict (``decollate=False``, inference.json's) or MONAI's
    default decollated list of per-slice dicts.
    """
    if isinstance(batch, Mapping):
        probs, images = output["pred"], batch.get("image")
        count = len(probs)
        fields = {k: [int(v) for v in batch[k]] for k in ("input", "slice", "height", "width")}
        errors = [str(e or "") for e in batch.get("error", [""] * count)]
        boxes = as_boxes(batch[BOX_KEY]) if BOX_KEY in batch else None
    else:
        probs = [o["pred"] for o in output]
        count, images = len(probs), [item.get("image") for item in batch]
        images = None if any(image is None for image in images) else images
        fields = {k: [int(item[k]) for item in batch] for k in ("input", "slice", "height", "width")}
        errors = [str(item.get("error", "") or "") for item in batch]
        boxes = [as_boxes(item[BOX_KEY])[0] for item in batch] if batch and BOX_KEY in batch[0] else None
    flairs = None if images is None else [images[k][1] for k in range(count)]
    return fields["input"], fields["slice"], probs, fields["height"], fields["width"], flairs, errors, boxes


def _groups(sizes: Sequence[tuple[int, int]]) -> dict[tuple[int, int], list[int]]:
    groups: dict[tuple[int, int], list[int]] = {}
    for position, size in enumerate(sizes):
        groups.setdefault(size, []).append(position)
    return groups


def _stack(images: Any, chosen: list[int]) -> torch.Tensor:
    """(len(chosen), 1, h, w) float32 on the CPU from a batched tensor or a list of per-slice arrays."""
    if isinstance(images, torch.Tensor):
        picked = images[chosen] if len(chosen) != len(images) else images
        picked = picked.reshape(len(chosen), -1, *images.shape[-2:])[:, :1]
    else:
        picked = torch.stack([torch.as_tensor(images[k]).reshape(1, *images[k].shape[-2:]) for k in chosen])
    picked = picked.as_tensor() if hasattr(picked, "as_tensor") else picked
    return picked.detach().to(device="cpu", dtype=torch.float32)


def resized_back(stacked: torch.Tensor, size: tuple[int, int], boxes: Sequence | None) -> torch.Tensor:
    """(n, C, S, S) network-frame values of slices of ``size`` onto ``size``: bilinear resize, or
    with ``boxes`` (crop "head", one per slice) :func:`transforms.uncrop` through them."""
    if boxes is not None:
        return uncrop(stacked, boxes, size, size)
    if tuple(stacked.shape[-2:]) != size:
        return torch.nn.functional.interpolate(stacked, size=size, mode="bilinear", align_corners=False)
    return stacked


def batch_masks(
    probs: Any, sizes: Sequence[tuple[int, int]], threshold: float, boxes: Sequence | None = None
) -> list[np.ndarray]:
    """Per slice, the uint8 0/1 mask of shape ``sizes[k]`` from probabilities ``probs[k]`` ((1, S, S)).

    Args:
        probs: (B, 1, S, S) tensor, or B arrays of shape (1, S, S) or (S, S).
        sizes: (height, width) of each slice before resizing.
        threshold: lesion where the resized probability is above it.
        boxes: crop "head": each slice's head box ``[top, left, bottom, right]``, which ``probs[k]``
            covers; the probabilities are mapped back through it. Default None: the whole slice.
    """
    masks: list[np.ndarray] = [np.empty(0, dtype=np.uint8)] * len(sizes)
    for size, chosen in _groups([tuple(map(int, s)) for s in sizes]).items():
        stacked = _stack(probs, chosen)
        if boxes is not None:
            stacked = resized_back(stacked, size, [boxes[k] for k in chosen])
        elif tuple(stacked.shape[-2:]) != size:
            stacked = torch.nn.functional.interpolate(
                stacked, size=size, mode="bilinear", align_corners=False
            )
        above = (stacked[:, 0] > threshold).numpy().astype(np.uint8)
        for k, mask in zip(chosen, above):
            masks[k] = mask
    return masks


def uncropped_flairs(flairs: Any, boxes: Sequence, sizes: Sequence[tuple[int, int]]) -> list[torch.Tensor]:
    """Crop "head": each slice's FLAIR (S, S) as the network saw it (its head box) mapped back onto
    the network's frame of the uncropped slice (S x S, as crop "none" gives it), zero outside the
    box, so that the report's thumbnails and masks line up.

    Args:
        flairs: (B, S, S) tensor or B (S, S) arrays. boxes: B boxes. sizes: B (height, width).
    """
    out: list[torch.Tensor] = [torch.empty(0)] * len(sizes)
    for size, chosen in _groups([tuple(map(int, s)) for s in sizes]).items():
        stacked = _stack(flairs, chosen)
        back = uncrop(stacked, [boxes[k] for k in chosen], size, tuple(stacked.shape[-2:]))
        for k, flair in zip(chosen, back[:, 0]):
            out[k] = flair
    return out


def batch_thumbnails(flairs: Any, side: int) -> list[np.ndarray]:
    """Per slice, its FLAIR area-downsampled to at most ``side`` pixels a side, float32.

    Args:
        flairs: (B, S, S) or (B, 1, S, S) tensor, or B arrays of shape (S, S).
        side: the largest side of a thumbnail.
    """
    count = len(flairs)
    sizes = [tuple(flairs[k].shape[-2:]) for k in range(count)]
    thumbs: list[np.ndarray] = [np.empty(0, dtype=np.float32)] * count
    for size, chosen in _groups(sizes).items():
        stacked = _stack(flairs, chosen)
        target = tuple(min(s, side) for s in size)
        if target != tuple(size):
            stacked = torch.nn.functional.interpolate(stacked, size=target, mode="area")
        small = stacked[:, 0].numpy()
        for k, thumb in zip(chosen, small):
            thumbs[k] = thumb
    return thumbs
