"""False positives and patient-level detection, per patient from the 3-D stack of slices, in numpy.

Per-volume Dice alone hides what matters most on a healthy brain: a lesion-free patient's Dice is
NaN when nothing is predicted (left out of the mean) and 0 for any prediction, however small or
large. The figures here say how much was predicted where there is no lesion and whether the
patient would be called positive. Definitions, for a patient's predicted and true masks
(slices, H, W):

- false-positive voxels: predicted voxels outside the true mask (on a lesion-free patient, every
  predicted voxel); in mL when the voxel size is known (the kaggle_3m TIFFs do not say it).
- false-positive voxels on lesion-free slices: predicted voxels on the slices whose true mask is
  empty, for every patient.
- detected: the predicted mask holds at least one 3-D connected component of at least
  ``min_component_voxels`` voxels (face connectivity, as :func:`metrics.largest_component`).
- sensitivity: detected patients / patients with a lesion; specificity: patients not detected /
  lesion-free patients. Undefined (None) without such patients.
- false-positive-aware Dice (:func:`fp_aware_dice`), for model selection.

Conventions of :mod:`pipeline.evaluation.metrics` otherwise (Dice NaN when both masks are empty).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from scipy import ndimage

from pipeline.evaluation.metrics import _binary_pair, dice, summarize

# Counted at the evaluated resolution (image_size). Far below the lesions to be found (the smallest
# of the real-anatomy trial in issue 17 held 342 voxels; at 64 px a lesion keeps 1/16 of its voxels
# at 256 px) and above the specks of a few voxels a noisy threshold leaves: a call needs a blob.
DEFAULT_MIN_COMPONENT_VOXELS = 10


def check_min_component_voxels(value: Any) -> int:
    """``value`` as an int; ValueError unless it is a whole number of voxels, at least 1."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ValueError(f"min_component_voxels must be a whole number of voxels >= 1, not {value!r}")
    return int(value)


def voxel_volume_ml(voxel_spacing_mm: Sequence[float] | None) -> float | None:
    """Volume of one voxel in mL from its size in mm (slice, row, column); None stays None.

    Raises:
        ValueError: not three finite positive sizes.
    """
    if voxel_spacing_mm is None:
        return None
    sizes = [float(s) for s in voxel_spacing_mm]
    if len(sizes) != 3 or not all(math.isfinite(s) and s > 0 for s in sizes):
        raise ValueError(
            "voxel_spacing_mm must be three positive sizes in mm (slice, row, column) or null, "
            f"not {list(voxel_spacing_mm)}"
        )
    return math.prod(sizes) / 1000.0


def component_sizes(mask3d: Any, connectivity: int = 1) -> np.ndarray:
    """Voxel counts of the connected components of a mask, largest first (empty for an empty mask).

    Args:
        mask3d: binary mask, usually (slices, H, W).
        connectivity: 1 = faces only (the default), up to ``mask3d.ndim`` = faces, edges and corners,
            as in ``scipy.ndimage.generate_binary_structure``.
    """
    mask = np.asarray(mask3d) != 0
    if not 1 <= connectivity <= max(mask.ndim, 1):
        raise ValueError(
            f"connectivity must be in 1..{mask.ndim} for a {mask.ndim}-D mask, not {connectivity}"
        )
    if not mask.any():
        return np.zeros(0, dtype=np.int64)
    # labelled within the mask's bounding box (a lesion's box is a small part of a volume),
    # narrowed one axis at a time so each projection reads only what is left
    for axis in range(mask.ndim):
        moved = np.moveaxis(mask, axis, 0)
        hit = moved.reshape(moved.shape[0], -1).any(axis=1)
        first, last = int(np.argmax(hit)), len(hit) - int(np.argmax(hit[::-1]))
        mask = mask[(slice(None),) * axis + (slice(first, last),)]
    labels, _ = ndimage.label(mask, structure=ndimage.generate_binary_structure(mask.ndim, connectivity))
    return np.sort(np.bincount(labels.ravel())[1:])[::-1]


def fp_aware_dice(dice_value: float, has_lesion: bool, detected: bool) -> float:
    """A patient's score for model selection: per-volume Dice that punishes false positives.

    A patient with a lesion scores its per-volume Dice. A lesion-free patient scores 1 when it is
    not detected (no component of ``min_component_voxels`` or more) and 0 when it is. This is the
    per-volume Dice with its undefined case (nothing to find, nothing found) scored as the perfect
    answer it is, instead of leaving the patient out: a model silent on healthy brains gains, one
    that paints a lesion on them loses a whole patient, as a clinical reader would judge it. The
    detection rule, not "any voxel", decides, so specks the minimum-component rule would remove do
    not cost a patient; on data without lesion-free patients the score equals the per-volume Dice.
    The score is binary, not graded by volume, so no voxel-count scale has to be chosen; the
    false-positive volume is reported beside it.

    Args:
        dice_value: the patient's per-volume Dice (defined when the patient has a lesion).
        has_lesion: the true mask is not empty.
        detected: the patient is called positive.
    """
    if has_lesion:
        return float(dice_value)
    return 0.0 if detected else 1.0


def volume_detection(
    pred_volume: Any,
    truth_volume: Any,
    min_component_voxels: int = DEFAULT_MIN_COMPONENT_VOXELS,
    voxel_volume_ml: float | None = None,
    connectivity: int = 1,
) -> dict[str, Any]:
    """False positives and detection of one patient's stacked volume.

    Args:
        pred_volume: predicted mask (slices, H, W), slices in order (post-processed as evaluated).
        truth_volume: true mask, same shape.
        min_component_voxels: the smallest 3-D component that makes the patient detected. Default
            ``DEFAULT_MIN_COMPONENT_VOXELS`` (10).
        voxel_volume_ml: volume of one voxel in mL (:func:`voxel_volume_ml`); default None, no mL.
        connectivity: of the components, see :func:`component_sizes`. Default 1 (faces).

    Returns:
        ``{"has_lesion", "detected", "largest_component_voxels", "fp_voxels",
        "fp_voxels_lesion_free_slices", "lesion_free_slices", "fp_aware_dice"}``, with ``"fp_ml"``
        and ``"fp_ml_lesion_free_slices"`` when ``voxel_volume_ml`` is given.
    """
    p, t = _binary_pair(pred_volume, truth_volume)
    if p.ndim != 3:
        raise ValueError(f"volume_detection expects (slices, H, W) volumes, got shape {p.shape}")
    min_component_voxels = check_min_component_voxels(min_component_voxels)
    sizes = component_sizes(p, connectivity)
    largest = int(sizes[0]) if sizes.size else 0
    lesion_free_slices = ~t.reshape(t.shape[0], -1).any(axis=1)
    record = {
        "has_lesion": bool(t.any()),
        "detected": largest >= min_component_voxels,
        "largest_component_voxels": largest,
        "fp_voxels": int(np.count_nonzero(p & ~t)),
        "fp_voxels_lesion_free_slices": int(np.count_nonzero(p[lesion_free_slices])),
        "lesion_free_slices": int(np.count_nonzero(lesion_free_slices)),
    }
    record["fp_aware_dice"] = fp_aware_dice(dice(p, t), record["has_lesion"], record["detected"])
    if voxel_volume_ml is not None:
        record["fp_ml"] = record["fp_voxels"] * voxel_volume_ml
        record["fp_ml_lesion_free_slices"] = record["fp_voxels_lesion_free_slices"] * voxel_volume_ml
    return record


def volume_summary(values: Iterable[float]) -> dict[str, Any]:
    """``{"mean", "median", "max", "total", "count"}`` of volumes (None but count when there is none)."""
    array = np.asarray(list(values), dtype=np.float64).ravel()
    if array.size == 0:
        return {"mean": None, "median": None, "max": None, "total": None, "count": 0}
    return {
        "mean": float(array.mean()),
        "median": float(np.median(array)),
        "max": float(array.max()),
        "total": float(array.sum()),
        "count": int(array.size),
    }


def detection_aggregates(records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The figures over patients, from per-patient records.

    Args:
        records: one per patient: ``volume_detection``'s dict with the patient's ``"dice"``.

    Returns:
        ``"lesion_dice"`` (``summarize`` of the Dice of patients with a lesion), ``"fp_aware_dice"``
        (``summarize`` over all patients), ``"sensitivity"`` and ``"specificity"`` (None without
        lesion or lesion-free patients), ``"detection"`` (the counts ``true_positive``,
        ``false_negative``, ``true_negative``, ``false_positive``), ``"fp_voxels_lesion_free"``
        (``volume_summary`` over lesion-free patients), ``"fp_voxels_lesion_free_slices"`` (over
        all patients), and the same two in mL (``"fp_ml_..."``) when every record has them.
    """
    lesion = [r for r in records if r["has_lesion"]]
    free = [r for r in records if not r["has_lesion"]]
    true_positive = sum(bool(r["detected"]) for r in lesion)
    false_positive = sum(bool(r["detected"]) for r in free)
    out: dict[str, Any] = {
        "lesion_dice": summarize(r["dice"] for r in lesion),
        "fp_aware_dice": summarize(r["fp_aware_dice"] for r in records),
        "sensitivity": true_positive / len(lesion) if lesion else None,
        "specificity": (len(free) - false_positive) / len(free) if free else None,
        "detection": {
            "true_positive": true_positive,
            "false_negative": len(lesion) - true_positive,
            "true_negative": len(free) - false_positive,
            "false_positive": false_positive,
        },
    }
    units = ("voxels", "ml") if records and all("fp_ml" in r for r in records) else ("voxels",)
    for unit in units:
        out[f"fp_{unit}_lesion_free"] = volume_summary(r[f"fp_{unit}"] for r in free)
        out[f"fp_{unit}_lesion_free_slices"] = volume_summary(
            r[f"fp_{unit}_lesion_free_slices"] for r in records
        )
    return out
