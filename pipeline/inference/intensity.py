"""Intensity windowing of 12/16-bit sequences onto the 8-bit range of the training slices.

The kaggle_3m slices the network was trained on are 8-bit (0..255 per channel, background 0).
Clinical scans are stored with 12 or 16 bits (DICOM BitsStored 12 in 16 allocated, int16/uint16
NIfTI, NRRD, MetaImage) or as floats (e.g. z-scored BraTS volumes), whose few extreme voxels
(vessels, flow and fat, 0.1-1 % of the brain, often 2-4x brighter than lesions) would set the
slice maximum of the training chain's per-slice min-max scaling and squeeze the brain into a
fraction of the range the network saw. Decisions:

- **Which sequences**: a sequence (one channel: a file, a DICOM series, or one channel of a
  3-channel volume) is windowed when it is not already 8-bit: its stored type is an integer wider
  than 8 bits (whatever its values: a 12-bit scan that happens to stay below 256 is still a
  12-bit scan), or any of its values is outside 0..255 (floats). An 8-bit sequence (uint8/int8,
  or floats within 0..255, such as an 8-bit export) is left exactly as it is.
- **The window**: the 0.5th to 99.5th percentile of the sequence's **non-zero** voxels, over the
  whole volume (all slices, one window per sequence and volume, not per slice). Zero is the
  background (air set to 0 by the scanner or a skull stripping, the padding of a resampling, the
  0 of the 8-bit training slices): counting it would move the window with the field of view
  (a head filling 30 % or 70 % of the volume gives another 99.5th percentile of the whole
  volume) and, for a skull-stripped volume where most voxels are 0, put the 0.5th percentile at
  0. Values are clipped to the window and scaled linearly to 0..255; voxels that are exactly 0
  stay 0 (background stays black, as in the training slices, also for z-scored data whose window
  holds 0). Not rounded to integers: the network's input is the min-max scaled float anyway.
  A window of zero width (a constant sequence) maps its non-zero voxels to 255.
- **When**: per sequence, **before** resampling onto FLAIR's grid
  (:mod:`pipeline.inference.sequences_read`): the window is a property of the stored sequence,
  and resampling would add interpolated values and the zero padding outside the sequence's field
  of view to the voxels the percentiles are taken over.
- The per-slice min-max scaling of the training chain is not done here: the preprocessing does it
  afterwards, as for every input (:mod:`pipeline.inference.preprocessing`).

kaggle_3m TIFF slices are 8-bit and never pass through here.
"""

from __future__ import annotations

import numpy as np

__all__ = ["WINDOW_PERCENTILES", "is_8bit", "window_to_8bit"]

WINDOW_PERCENTILES = (0.5, 99.5)


def is_8bit(values: np.ndarray, stored: np.dtype | type) -> bool:
    """True when a sequence needs no windowing: stored in 8 bits, or floats within 0..255."""
    stored = np.dtype(stored)
    if stored.kind in "iu":
        return stored.itemsize == 1
    if stored.kind == "b":
        return True
    return values.size == 0 or bool(np.nanmin(values) >= 0 and np.nanmax(values) <= 255)


def window_to_8bit(values: np.ndarray, stored: np.dtype | type | None = None) -> np.ndarray:
    """One sequence (any shape) as float32 on the 8-bit range (see the module docstring).

    Args:
        values: the sequence's voxels, as read (any shape, one channel).
        stored: the type the sequence is stored in (default ``values.dtype``): an integer type
            wider than 8 bits is windowed whatever the values.

    Returns:
        float32 array of ``values``' shape: ``values`` unchanged when already 8-bit, else the
        non-zero voxels clipped to the 0.5-99.5th percentile of the non-zero voxels and scaled to
        0..255, the zero voxels 0.
    """
    values = np.asarray(values)
    stored = values.dtype if stored is None else np.dtype(stored)
    out = values.astype(np.float32)
    if is_8bit(out, stored):
        return out
    out = np.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0)
    foreground = out != 0
    if not foreground.any():
        return out
    low, high = np.percentile(out[foreground], WINDOW_PERCENTILES)
    if high <= low:
        scaled = np.full(out.shape, 255.0, np.float32)
    else:
        scaled = (out - np.float32(low)) * np.float32(255.0 / (high - low))
        scaled = np.clip(scaled, 0.0, 255.0, out=scaled)
    return np.where(foreground, scaled, np.float32(0.0)).astype(np.float32)
