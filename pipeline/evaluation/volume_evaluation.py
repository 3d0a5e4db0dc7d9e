"""Per-patient and per-slice metrics of every post-processing option, from collected slices.

The options (``VARIANTS``), each applied to a patient's restacked volume:

- ``threshold``: sigmoid > threshold (default 0.5),
- ``threshold+lcc``: then keep the largest 3-D connected component per patient (the paper's code),
- ``tta``: mean of the logits of the slice and of its horizontal flip, then the threshold,
- ``tta+lcc``: both.
- ``threshold+mcs``, ``tta+mcs``: then drop the 3-D components smaller than
  ``min_component_voxels``, the size that calls a patient positive: the mask then agrees with the
  detection (a patient not detected gets an empty mask).

Each gets Dice, IoU and HD95 (:mod:`pipeline.evaluation.metrics`) and the false-positive and
detection figures (:mod:`pipeline.evaluation.detection`). When the slices carry the uncertainty
maps (``entropy``, ``votes``), each option's mask also gets the uncertainty scores
(:func:`pipeline.evaluation.uncertainty.patient_scores`) and their validation
(:mod:`pipeline.evaluation.uncertainty_validation`).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np

from pipeline.evaluation import detection, metrics
from pipeline.evaluation.uncertainty import SCORES, patient_scores
from pipeline.evaluation.uncertainty_validation import DEFAULT_FLAG_RATE, add_uncertainty

VARIANTS = ("threshold", "threshold+lcc", "threshold+mcs", "tta", "tta+lcc", "tta+mcs")


def evaluate_volumes(
    slices: dict[str, dict[int, dict]],
    threshold: float,
    min_component_voxels: int = detection.DEFAULT_MIN_COMPONENT_VOXELS,
    voxel_spacing_mm: list[float] | None = None,
    uncertainty_flag_rate: float = DEFAULT_FLAG_RATE,
    uncertainty_threshold: float | None = None,
) -> tuple[dict, list[dict]]:
    """Per-patient and per-slice metrics of every post-processing option.

    Args:
        slices: patient -> slice number -> {"prob", "prob_tta", "truth", "image_file", "label_file"}.
        threshold: probability threshold.
        min_component_voxels: the smallest 3-D component that calls a patient positive. Default 10.
        voxel_spacing_mm: (slice, row, column) voxel size in mm; default None (voxels, pixels).
        uncertainty_flag_rate, uncertainty_threshold: how patients are flagged by their uncertainty
            (:func:`pipeline.evaluation.uncertainty_validation.validate_score`). Default 0.2, None.

    Returns:
        (summary dict with "cases" and "aggregates", per-slice rows for the CSV).
    """
    ml = detection.voxel_volume_ml(voxel_spacing_mm)
    cases, rows = [], []
    per_variant: dict[str, dict[str, list[float]]] = {v: defaultdict(list) for v in VARIANTS}
    records: dict[str, list[dict]] = {v: [] for v in VARIANTS}
    scores: dict[str, dict[str, list[float]]] = {v: {name: [] for name in SCORES} for v in VARIANTS}
    with_maps = bool(slices) and all("votes" in s for by_slice in slices.values() for s in by_slice.values())
    for patient in sorted(slices):
        order = sorted(slices[patient])
        truth = np.stack([slices[patient][i]["truth"] for i in order])
        probs = {
            "threshold": np.stack([slices[patient][i]["prob"] for i in order]),
            "tta": np.stack([slices[patient][i]["prob_tta"] for i in order]),
        }
        masks = {}
        for base in ("threshold", "tta"):
            masks[base] = probs[base] > threshold
            masks[f"{base}+lcc"] = metrics.largest_component(masks[base])
            masks[f"{base}+mcs"] = metrics.remove_small_components(masks[base], min_component_voxels)
        if with_maps:
            entropy = np.stack([slices[patient][i]["entropy"] for i in order])
            votes = np.stack([slices[patient][i]["votes"] for i in order])
            for variant in VARIANTS:
                for name, value in patient_scores(masks[variant], entropy, votes).items():
                    scores[variant][name].append(value)
        case_metrics = {}
        for variant in VARIANTS:
            result = metrics.volume_metrics(masks[variant], truth, voxel_spacing_mm)
            result.update(detection.volume_detection(masks[variant], truth, min_component_voxels, ml))
            records[variant].append(result)
            case_metrics[variant] = {k: _json_number(v) for k, v in result.items()}
            for key in ("dice", "iou", "hd95"):
                per_variant[variant][key].append(result[key])
        cases.append(
            {
                "patient": patient,
                "slices": [int(i) for i in order],
                "images": [slices[patient][i]["image_file"] for i in order],
                "labels": [slices[patient][i]["label_file"] for i in order],
                "metrics": case_metrics,
            }
        )
        for z, index in enumerate(order):
            row = {"patient": patient, "slice": int(index), "image": slices[patient][index]["image_file"]}
            row["true_pixels"] = int(truth[z].sum())
            for variant in VARIANTS:
                pred = masks[variant][z]
                row[f"{variant}_dice"] = _csv_number(metrics.dice(pred, truth[z]))
                row[f"{variant}_iou"] = _csv_number(metrics.iou(pred, truth[z]))
                row[f"{variant}_pred_pixels"] = int(pred.sum())
            row["bce"] = _csv_number(metrics.per_slice_bce(probs["threshold"][z], truth[z]))
            row["tta_bce"] = _csv_number(metrics.per_slice_bce(probs["tta"][z], truth[z]))
            rows.append(row)
    aggregates = {
        variant: {key: metrics.summarize(values) for key, values in per_variant[variant].items()}
        for variant in VARIANTS
    }
    for variant in VARIANTS:
        aggregates[variant].update(detection.detection_aggregates(records[variant]))
        aggregates[variant]["slice_dice"] = metrics.summarize(
            [float("nan") if r[f"{variant}_dice"] == "" else float(r[f"{variant}_dice"]) for r in rows]
        )
    aggregates["threshold"]["slice_bce"] = metrics.summarize([float(r["bce"]) for r in rows])
    aggregates["tta"]["slice_bce"] = metrics.summarize([float(r["tta_bce"]) for r in rows])
    summary = {
        "threshold": threshold,
        "min_component_voxels": min_component_voxels,
        "voxel_spacing_mm": None if voxel_spacing_mm is None else [float(s) for s in voxel_spacing_mm],
        "n_patients": len(cases),
        "n_slices": len(rows),
        "cases": cases,
        "aggregates": aggregates,
        "note": "Dice/IoU are undefined (null) when truth and prediction are both empty; such patients are "
        "counted in n_undefined and left out of mean and median. hd95 is in pixels, or mm with "
        "voxel_spacing_mm (inf when exactly one mask is empty, such cases are excluded from the hd95 "
        "aggregates). A patient is detected when its mask holds a 3-D component of min_component_voxels "
        "or more: sensitivity over patients with a lesion, specificity over lesion-free ones (null "
        "without such patients). fp_voxels: predicted voxels outside the true mask; lesion_dice: Dice "
        "over patients with a lesion; fp_aware_dice: Dice, a lesion-free patient scoring 1 when not "
        "detected and 0 when detected.",
    }
    if with_maps:
        add_uncertainty(summary, scores, uncertainty_flag_rate, uncertainty_threshold)
    return summary, rows


def _json_number(value: Any) -> Any:
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    value = float(value)
    return value if np.isfinite(value) else None


def _csv_number(value: float) -> str:
    return "" if not np.isfinite(value) else f"{value:.6f}"
