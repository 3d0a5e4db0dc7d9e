"""The head's bounding box of a patient volume, for train.json's ``crop: "head"`` option.

Buda et al. (brain-segmentation-pytorch, ``crop_sample``) crop every volume to the box of its head
before resizing, so the network spends its pixels on the head rather than on the air around it.
:func:`head_box` gives one square box per patient, the same for all its slices; the transform
``transforms.HeadCropd`` crops to it and ``transforms.uncrop`` maps predictions back.

How the box is found, and why:

- The brightest channel of each voxel (max over the 3 sequences), all slices of the patient
  together: the head is bright in at least one sequence, and one box serves every slice.
- An Otsu threshold of that volume (:func:`otsu_threshold`: ``skimage.filters.threshold_otsu``'s
  numbers, faster), not a fraction of the brightness: on a noisy background (this project's hard
  phantom, 18-24 of 255 around a head whose tissue is 60-250) the 10%-of-reference rule of
  :mod:`pipeline.data.volume_stats` marks most or all of the frame as head, whereas Otsu's
  threshold falls between the two modes of the histogram (hard phantom: 73 to 95 of 255).
- Holes filled per slice, then 3-D connected components: the scalp is a bright ring around the
  brain, separated from it by the dark skull; filling makes ring and brain one component. Of the
  components, those of at least :data:`SPECK_FRACTION` of the largest are kept: isolated specks of
  noise or a few hot voxels above the threshold do not stretch the box, while a head whose ring is
  broken open (two big components) is still covered whole.
- The row and column extent of what is kept, over all slices, plus a margin of
  :data:`MARGIN_FRACTION` of the frame's larger side on each side (the training augmentation's
  zoom and rotation move the head by a few pixels), made square: side = the larger extent, centred
  on the smaller one. A square box keeps the head's aspect when resized to the square network
  input. It may reach past the image edge; the crop pads with zeros there.
- A volume with nothing above the threshold (blank, or flat) gives the whole frame, so cropping it
  changes nothing.

Boxes are ``[top, left, bottom, right]`` in pixels of the slice, half-open (rows ``top`` to
``bottom - 1``), Python ints. Training computes them once per patient from its TIFF slices
(:func:`patient_boxes`, cached beside the split file like the intensity bounds); inference from the
input volume as read (:func:`head_box`), the same function.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pipeline.data.volume_stats import per_patient, read_tiff_volume

__all__ = [
    "HEAD_BOX_KEY",
    "MARGIN_FRACTION",
    "METHOD",
    "SPECK_FRACTION",
    "head_box",
    "head_box_file",
    "otsu_threshold",
    "patient_boxes",
    "tiff_head_box",
]

HEAD_BOX_KEY = "head_box"
MARGIN_FRACTION = 0.03
SPECK_FRACTION = 0.01
METHOD = {"threshold": "otsu", "margin_fraction": MARGIN_FRACTION, "speck_fraction": SPECK_FRACTION}
_VERSION = 1


def otsu_threshold(values: np.ndarray) -> float:
    """Otsu's threshold of ``values``, as ``skimage.filters.threshold_otsu`` computes it (its
    histogram: one bin per integer value for integer data, 256 bins otherwise), from a
    ``np.bincount`` histogram: skimage's took 1.5 s of a patient's 2 s here.
    """
    flat = values.ravel()
    if np.issubdtype(flat.dtype, np.integer):
        low = int(flat.min())
        shifted = flat if flat.dtype == np.uint8 else (flat.astype(np.int64) - low)
        counts = np.bincount(shifted)[low if flat.dtype == np.uint8 else 0 :].astype(np.float64)
        centers = np.arange(low, low + len(counts), dtype=np.float64)
        kept = counts > 0  # skimage drops the empty bins of an integer histogram
        counts, centers = counts[kept], centers[kept]
    else:
        counts, edges = np.histogram(flat, bins=256)
        counts, centers = counts.astype(np.float64), (edges[:-1] + edges[1:]) / 2
    weight1, weight2 = np.cumsum(counts), np.cumsum(counts[::-1])[::-1]
    mean1 = np.cumsum(counts * centers) / weight1
    mean2 = (np.cumsum((counts * centers)[::-1]) / weight2[::-1])[::-1]
    between = weight1[:-1] * weight2[1:] * (mean1[:-1] - mean2[1:]) ** 2
    return float(centers[int(np.argmax(between))])


def _head_voxels(brightest: np.ndarray) -> np.ndarray:
    """(k, H, W) bool: above Otsu's threshold, holes filled per slice, specks dropped."""
    from scipy import ndimage

    if brightest.min() == brightest.max():
        return np.zeros(brightest.shape, dtype=bool)
    foreground = brightest > otsu_threshold(brightest)
    # holes filled slice by slice (ndimage.binary_fill_holes of each slice, in one labelling): the
    # background components, 4-connected within a slice, that do not touch the slice's border
    in_plane = np.zeros((3, 3, 3), dtype=bool)
    in_plane[1] = ndimage.generate_binary_structure(2, 1)
    background, _ = ndimage.label(~foreground, structure=in_plane)
    border = np.unique(np.concatenate([background[:, [0, -1], :].ravel(), background[:, :, [0, -1]].ravel()]))
    foreground |= ~np.isin(background, border)  # label 0 (the foreground) is never a hole
    labels, count = ndimage.label(foreground)
    if count <= 1:
        return foreground
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return (sizes >= SPECK_FRACTION * sizes.max())[labels] & (labels > 0)


def head_box(slices: np.ndarray) -> list[int]:
    """The square box ``[top, left, bottom, right]`` of the head of a volume (module docstring).

    Args:
        slices: the volume as (k, C, H, W) (slice, channel, rows, columns), any numeric dtype.

    Returns:
        Four ints, half-open; ``bottom - top == right - left`` except for a blank volume, which
        gives the whole frame ``[0, 0, H, W]``.

    Raises:
        ValueError: ``slices`` is not four-dimensional or is empty.
    """
    volume = np.asarray(slices)
    if volume.ndim != 4 or volume.size == 0:
        raise ValueError(
            f"head_box needs a volume of shape (slices, channels, rows, columns), got {volume.shape}"
        )
    height, width = volume.shape[-2:]
    brightest = volume[:, 0]
    for channel in range(1, volume.shape[1]):
        brightest = np.maximum(brightest, volume[:, channel])
    head = _head_voxels(brightest)
    if not head.any():
        return [0, 0, int(height), int(width)]
    rows = np.flatnonzero(head.any(axis=(0, 2)))
    cols = np.flatnonzero(head.any(axis=(0, 1)))
    margin = max(1, math.ceil(MARGIN_FRACTION * max(height, width)))
    top, bottom = int(rows[0]) - margin, int(rows[-1]) + 1 + margin
    left, right = int(cols[0]) - margin, int(cols[-1]) + 1 + margin
    side = max(bottom - top, right - left)
    top -= (side - (bottom - top)) // 2
    left -= (side - (right - left)) // 2
    return [top, left, top + side, left + side]


def tiff_head_box(paths: Sequence[str | os.PathLike]) -> list[int]:
    """:func:`head_box` of one patient's TIFF slices, in the order given."""
    return head_box(read_tiff_volume(paths))


def head_box_file(split_file: str | os.PathLike) -> Path:
    """The cache of the per-patient boxes, beside the split file: ``<split>.head_box.json``."""
    split = Path(split_file)
    return split.with_name(f"{split.stem}.head_box.json")


def patient_boxes(records: Sequence[dict], cache_file: str | os.PathLike, fingerprint: str) -> dict:
    """The :func:`tiff_head_box` of every patient of ``records``, computed once and cached.

    The cache is that of ``pipeline.data.volume_stats.patient_bounds`` (reused for the same
    fingerprint, files and method, else rewritten); delete it to force a rerun.

    Returns:
        ``{patient: [top, left, bottom, right]}``.
    """
    return per_patient(records, cache_file, fingerprint, tiff_head_box, METHOD, _VERSION, "Crop: head boxes")
