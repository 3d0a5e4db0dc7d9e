"""A batch of the network's probabilities to per-slice masks (and FLAIR thumbnails), in one go.

The per-slice rule of :class:`pipeline.inference.writers.MaskWriter`: probabilities resized back
to the slice's shape (bilinear, ``align_corners=False``), lesion where above the threshold. Done
here for a whole batch at once, one resize and one comparison per group of equally sized slices
instead of one per slice: at the demo size the per-slice calls cost a fifth of a forward pass.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

__all__ = ["batch_masks", "batch_thumbnails", "engine_batch"]


def engine_batch(batch: Any, output: Any) -> tuple[list, list, Any, list, list, Any, list]:
    """An evaluator's batch and output as :meth:`MaskWriter.add_batch`'s arguments: input indices,
    slice positions, probabilities, heights, widths, FLAIR channels (None without images), errors.

    Both forms: the collated batch dict (``decollate=False``, inference.json's) or MONAI's
    default decollated list of per-slice dicts.
    """
    if isinstance(batch, Mapping):
        probs, images = output["pred"], batch.get("image")
        count = len(probs)
        fields = {k: [int(v) for v in batch[k]] for k in ("input", "slice", "height", "width")}
        errors = [str(e or "") for e in batch.get("error", [""] * count)]
    else:
        probs = [o["pred"] for o in output]
        count, images = len(probs), [item.get("image") for item in batch]
        images = None if any(image is None for image in images) else images
        fields = {k: [int(item[k]) for item in batch] for k in ("input", "slice", "height", "width")}
        errors = [str(item.get("error", "") or "") for item in batch]
    flairs = None if images is None else [images[k][1] for k in range(count)]
    return fields["input"], fields["slice"], probs, fields["height"], fields["width"], flairs, errors


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


def batch_masks(probs: Any, sizes: Sequence[tuple[int, int]], threshold: float) -> list[np.ndarray]:
    """Per slice, the uint8 0/1 mask of shape ``sizes[k]`` from probabilities ``probs[k]`` ((1, S, S)).

    Args:
        probs: (B, 1, S, S) tensor, or B arrays of shape (1, S, S) or (S, S).
        sizes: (height, width) of each slice before resizing.
        threshold: lesion where the resized probability is above it.
    """
    masks: list[np.ndarray] = [np.empty(0, dtype=np.uint8)] * len(sizes)
    for size, chosen in _groups([tuple(map(int, s)) for s in sizes]).items():
        stacked = _stack(probs, chosen)
        if tuple(stacked.shape[-2:]) != size:
            stacked = torch.nn.functional.interpolate(
                stacked, size=size, mode="bilinear", align_corners=False
            )
        above = (stacked[:, 0] > threshold).numpy().astype(np.uint8)
        for k, mask in zip(chosen, above):
            masks[k] = mask
    return masks


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
