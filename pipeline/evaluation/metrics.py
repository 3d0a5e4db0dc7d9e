"""Reference metrics of binary segmentation in numpy: Dice, IoU, BCE, HD95, largest component.

Per-volume Dice over slices that arrive in any order: :mod:`pipeline.evaluation.volume_dice`.

Conventions (those of nnU-Net): Dice and IoU are NaN when prediction and truth are both empty (the
overlap of two empty sets is undefined) and 0 when exactly one is empty; aggregates use nanmean
and report how many values were undefined. Masks are anything numpy turns into an array; non-zero
means foreground.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from scipy import ndimage


def _binary_pair(pred: Any, truth: Any) -> tuple[np.ndarray, np.ndarray]:
    p, t = np.asarray(pred) != 0, np.asarray(truth) != 0
    if p.shape != t.shape:
        raise ValueError(f"pred and truth must have the same shape, got {p.shape} and {t.shape}")
    return p, t


def _dice_from_counts(intersection: int, pred_sum: int, truth_sum: int) -> float:
    denominator = pred_sum + truth_sum
    return math.nan if denominator == 0 else 2.0 * intersection / denominator


def dice(pred: Any, truth: Any) -> float:
    """Dice similarity coefficient 2|P∩T| / (|P| + |T|) of two binary masks of any shape.

    Args:
        pred: predicted mask (boolean or 0/1).
        truth: true mask, same shape.

    Returns:
        The Dice in [0, 1]; NaN when both masks are empty, 0 when exactly one is.
    """
    p, t = _binary_pair(pred, truth)
    return _dice_from_counts(int(np.count_nonzero(p & t)), int(np.count_nonzero(p)), int(np.count_nonzero(t)))


def iou(pred: Any, truth: Any) -> float:
    """Intersection over union (Jaccard index) |P∩T| / |P∪T| of two binary masks of any shape.

    Args:
        pred: predicted mask (boolean or 0/1).
        truth: true mask, same shape.

    Returns:
        The IoU in [0, 1]; NaN when both masks are empty, 0 when exactly one is.
    """
    p, t = _binary_pair(pred, truth)
    union = int(np.count_nonzero(p | t))
    return math.nan if union == 0 else int(np.count_nonzero(p & t)) / union


def per_slice_bce(prob: Any, truth: Any, eps: float = 1e-7) -> float:
    """Mean binary cross-entropy of probabilities against a binary mask (natural log).

    Args:
        prob: probabilities in [0, 1] (after the sigmoid), any shape.
        truth: true mask (boolean or 0/1), same shape.
        eps: probabilities are clipped to [eps, 1 - eps] so the BCE stays finite. Default 1e-7.

    Returns:
        mean(-(y log p + (1 - y) log(1 - p))) over all pixels.
    """
    if not 0.0 < eps < 0.5:
        raise ValueError(f"eps must be in (0, 0.5), not {eps}")
    p = np.clip(np.asarray(prob, dtype=np.float64), eps, 1.0 - eps)
    y = (np.asarray(truth) != 0).astype(np.float64)
    if p.shape != y.shape:
        raise ValueError(f"prob and truth must have the same shape, got {p.shape} and {y.shape}")
    if p.size == 0:
        raise ValueError("prob and truth are empty arrays: the BCE of no pixels is undefined")
    return float(np.mean(-(y * np.log(p) + (1.0 - y) * np.log1p(-p))))


def _boundary(mask: np.ndarray) -> np.ndarray:
    """Foreground pixels with a background face-neighbour (outside the array counts as background)."""
    return mask & ~ndimage.binary_erosion(mask, border_value=0)


def _directed_distances(
    source: np.ndarray, target: np.ndarray, spacing: Sequence[float] | None
) -> np.ndarray:
    """Distance from each boundary point of ``source`` to the nearest boundary point of ``target``."""
    to_target = ndimage.distance_transform_edt(~_boundary(target), sampling=spacing)
    return to_target[_boundary(source)]


def hd95(pred: Any, truth: Any, spacing: Sequence[float] | None = None) -> float:
    """95th-percentile symmetric Hausdorff distance between the boundaries of two masks (2-D or 3-D).

    The boundary of a mask is its foreground pixels with a background face-neighbour. For each
    boundary point of one mask the Euclidean distance to the nearest boundary point of the other is
    taken; the result is the larger of the two directed 95th percentiles (linear interpolation).
    This is MONAI's ``compute_hausdorff_distance(percentile=95)`` and the convention of DeepMind's
    surface-distance library; MedPy instead pools both directions before the percentile.

    Args:
        pred: predicted mask (boolean or 0/1), 2-D or 3-D.
        truth: true mask, same shape.
        spacing: size of a pixel/voxel along each axis; default None means 1, so the distance
            is in pixels/voxels.

    Returns:
        The distance; NaN when both masks are empty, inf when exactly one is empty (no boundary
        to measure to: leave such cases out of means, or count them separately).
    """
    p, t = _binary_pair(pred, truth)
    if p.ndim not in (2, 3):
        raise ValueError(f"hd95 expects 2-D or 3-D masks, got shape {p.shape}")
    if spacing is not None and len(spacing) != p.ndim:
        raise ValueError(f"spacing must have one value per axis ({p.ndim}), got {list(spacing)}")
    p_any, t_any = bool(p.any()), bool(t.any())
    if not p_any and not t_any:
        return math.nan
    if not p_any or not t_any:
        return math.inf
    forward = np.percentile(_directed_distances(p, t, spacing), 95)
    backward = np.percentile(_directed_distances(t, p, spacing), 95)
    return float(max(forward, backward))


def largest_component(mask3d: Any, connectivity: int = 1) -> np.ndarray:
    """Keep only the largest connected component of a mask (a patient's stacked slices).

    The default, face connectivity (6-connectivity in 3-D), is ``scipy.ndimage.label``'s default
    and so the post-processing of the paper's code (Buda et al. 2019): two lesion pixels on
    neighbouring slices are connected when they sit at the same row and column.

    Args:
        mask3d: binary mask, usually (slices, H, W); any number of dimensions works.
        connectivity: neighbours that connect, as in ``scipy.ndimage.generate_binary_structure``:
            1 = faces only (6-connectivity in 3-D, the default), ``mask3d.ndim`` = faces, edges and
            corners (26-connectivity in 3-D).

    Returns:
        A boolean array of the same shape with the largest component only (on a tie, the one
        that comes first in C order); all False when the mask is empty.
    """
    mask = np.asarray(mask3d) != 0
    if mask.ndim == 0:
        raise ValueError("largest_component expects an array mask, got a scalar")
    if not 1 <= connectivity <= mask.ndim:
        raise ValueError(
            f"connectivity must be in 1..{mask.ndim} for a {mask.ndim}-D mask, not {connectivity}"
        )
    structure = ndimage.generate_binary_structure(mask.ndim, connectivity)
    labels, n = ndimage.label(mask, structure=structure)
    if n == 0:
        return mask
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == int(np.argmax(sizes))


def remove_small_components(mask3d: Any, min_voxels: int, connectivity: int = 1) -> np.ndarray:
    """Drop the connected components of fewer than ``min_voxels`` voxels (face connectivity by
    default, as :func:`largest_component`); a boolean array of the same shape."""
    mask = np.asarray(mask3d) != 0
    structure = ndimage.generate_binary_structure(mask.ndim, connectivity)
    labels, n = ndimage.label(mask, structure=structure)
    if n == 0:
        return mask
    sizes = np.bincount(labels.ravel())
    keep = sizes >= min_voxels
    keep[0] = False
    return keep[labels]


def volume_metrics(
    pred_volume: Any, truth_volume: Any, spacing: Sequence[float] | None = None
) -> dict[str, Any]:
    """Dice, IoU and HD95 of one patient's stacked volume, with the voxel counts.

    Args:
        pred_volume: predicted mask (slices, H, W).
        truth_volume: true mask, same shape.
        spacing: voxel size per axis for the HD95; default None (distances in voxels).

    Returns:
        ``{"dice", "iou", "hd95", "pred_voxels", "true_voxels", "empty"}``; ``empty`` is True when
        both volumes are empty (then Dice, IoU and HD95 are NaN).
    """
    p, t = _binary_pair(pred_volume, truth_volume)
    pred_voxels, true_voxels = int(np.count_nonzero(p)), int(np.count_nonzero(t))
    return {
        "dice": dice(p, t),
        "iou": iou(p, t),
        "hd95": hd95(p, t, spacing),
        "pred_voxels": pred_voxels,
        "true_voxels": true_voxels,
        "empty": pred_voxels == 0 and true_voxels == 0,
    }


def summarize(values: Iterable[float]) -> dict[str, Any]:
    """Mean and median of the finite values, with counts of those left out.

    Args:
        values: numbers; NaN means undefined (e.g. Dice of two empty masks), inf means unbounded
            (e.g. HD95 with one empty mask).

    Returns:
        ``{"mean", "median", "count", "n_undefined", "n_infinite", "n_total"}`` as plain floats and
        ints: ``count`` finite values, ``n_undefined`` NaNs, ``n_infinite`` infinities. Mean and
        median are None when there is no finite value, so the dict serialises to strict JSON.
    """
    array = np.asarray(list(values), dtype=np.float64).ravel()
    finite = array[np.isfinite(array)]
    has_values = finite.size > 0
    return {
        "mean": float(np.mean(finite)) if has_values else None,
        "median": float(np.median(finite)) if has_values else None,
        "count": int(finite.size),
        "n_undefined": int(np.count_nonzero(np.isnan(array))),
        "n_infinite": int(np.count_nonzero(np.isinf(array))),
        "n_total": int(array.size),
    }
