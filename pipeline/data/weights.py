"""Sampling weights that favour slices with large lesions (the tutorial's weighted sampler)."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from os import PathLike

import numpy as np

from transforms.reader import read_tiff

__all__ = ["lesion_weights", "mask_areas"]

logger = logging.getLogger(__name__)


def lesion_weights(areas: Sequence[float] | np.ndarray, floor: float = 0.1) -> np.ndarray:
    """Sampling weight of each slice from its lesion area.

    ``weight_i = (a_i + floor * S / n) / ((1 + floor) * S)`` with ``a_i`` the lesion area of
    slice i, ``S`` the total area and ``n`` the number of slices: every slice keeps a floor of
    ``floor * S / n`` so lesion-free slices are still drawn, and the weights sum to 1. The
    tutorial's ``floor`` is 0.1: all slices together then get 0.1 / 1.1 = 9% of the draws, so a
    lesion-free slice is rarely seen; with ``floor`` 1 they get half.
    When no slice has a lesion (``S == 0``) the weights are uniform, ``1 / n``, and a
    warning is logged.

    Args:
        areas: lesion area (e.g. pixel count) of each slice, all >= 0.
        floor: the share of the total lesion area spread evenly over all slices, > 0. Default
            0.1 (the tutorial's).

    Returns:
        float64 weights of shape (n,), summing to 1.

    Raises:
        ValueError: ``areas`` is empty, not one-dimensional, or holds a negative or
            non-finite value (the message names the first offending index), or ``floor`` <= 0.
    """
    if isinstance(floor, bool) or not isinstance(floor, (int, float)) or not 0 < floor < float("inf"):
        raise ValueError(f"sampling floor must be a number > 0, not {floor!r}")
    a = np.asarray(areas, dtype=np.float64)
    if a.ndim != 1:
        raise ValueError(f"areas must be a one-dimensional sequence, got shape {a.shape}")
    if a.size == 0:
        raise ValueError("areas is empty: lesion_weights needs at least one slice")
    bad = np.flatnonzero(~np.isfinite(a) | (a < 0))
    if bad.size:
        i = int(bad[0])
        raise ValueError(f"areas[{i}] must be a finite area >= 0, got {a[i]!r}")
    n, total = a.size, a.sum()
    if total == 0:
        logger.warning(
            "No slice has a lesion (all %d masks are empty): sampling uniformly, weight 1/%d", n, n
        )
        return np.full(n, 1.0 / n)
    return (a + floor * total / n) / ((1 + floor) * total)


def mask_areas(label_paths: Iterable[str | PathLike]) -> np.ndarray:
    """Lesion area of each mask file: its number of nonzero pixels.

    Args:
        label_paths: the mask TIFF files.

    Returns:
        int64 array of the areas, in the order of ``label_paths``.

    Raises:
        transforms.reader.TiffReadError: a file is missing or unreadable (a ValueError naming the file).
    """
    return np.asarray([np.count_nonzero(read_tiff(path)[0]) for path in label_paths], dtype=np.int64)
