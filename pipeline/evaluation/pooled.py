"""Pool the out-of-fold evaluations of a cross-validation: every patient once, by the model that did
not see it.

:func:`pool_folds` takes each fold's summary.json (evaluate.json's, on the fold's own validation
patients) and checks it is out of fold: its patients are exactly the fold's (from the fold file),
none of them is among the fold run's training patients (its split file), and together the folds
cover every patient of the fold file once. The pooled summary holds the per-patient records in
evaluate.json's format (each with its ``fold``, ``checkpoint`` and ``masks`` file) and, per
post-processing option, the aggregates over all patients (Dice, IoU, HD95, detection and false
positives, as evaluate.json computes them from the records), a 95% bootstrap confidence interval of
the mean and of the median Dice over patients (:func:`bootstrap_ci`: seeded, percentile method)
and each fold's own mean and median Dice.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.atomic import write_json
from pipeline.data.splits import SplitError
from pipeline.evaluation import detection, metrics

BOOTSTRAP_SAMPLES = 10_000
LEVEL = 0.95


class PoolingError(SplitError):
    """A fold's evaluation is not out of fold, or the folds do not cover the patients once."""


def bootstrap_ci(
    values: Sequence[float],
    samples: int = BOOTSTRAP_SAMPLES,
    seed: int = 0,
    level: float = LEVEL,
    statistic: str = "mean",
) -> list[float] | None:
    """Percentile bootstrap confidence interval of the mean (or median) of ``values``.

    ``samples`` resamples of ``n`` values drawn with replacement, all at once as
    ``numpy.random.default_rng(seed).integers(0, n, size=(samples, n))``; the interval is the
    ``(1 - level) / 2`` and ``(1 + level) / 2`` percentiles (numpy's linear interpolation) of the
    resampled statistic. NaN values (undefined Dice) are left out first, as the mean leaves them out.

    Returns:
        ``[low, high]``, or None when no value is finite.

    Raises:
        ValueError: ``samples`` < 1, ``level`` outside (0, 1) or an unknown ``statistic``.
    """
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise ValueError(f"bootstrap samples must be a whole number >= 1, not {samples!r}")
    if not 0 < level < 1:
        raise ValueError(f"confidence level must be in (0, 1), not {level!r}")
    if statistic not in ("mean", "median"):
        raise ValueError(f"statistic must be 'mean' or 'median', not {statistic!r}")
    array = np.asarray(values, dtype=np.float64)
    array = array[np.isfinite(array)]
    if array.size == 0:
        return None
    draws = np.random.default_rng(seed).integers(0, array.size, size=(samples, array.size))
    resampled = array[draws]
    stats = resampled.mean(axis=1) if statistic == "mean" else np.median(resampled, axis=1)
    low, high = np.percentile(stats, [100 * (1 - level) / 2, 100 * (1 + level) / 2])
    return [float(low), float(high)]


def _names(values: Sequence[str], limit: int = 5) -> str:
    values = sorted(values)
    return ", ".join(values[:limit]) + (f" and {len(values) - limit} more" if len(values) > limit else "")


def check_out_of_fold(folds: Sequence[dict], all_patients: Sequence[str]) -> None:
    """Refuse evaluations that are not out of fold, naming the fold, the files and the fix.

    Args:
        folds: per fold ``{"fold", "patients" (the fold file's), "train" (its run's training
            patients), "summary" (its summary.json), "summary_file"}``.
        all_patients: the patients of the fold file.
    """
    seen: dict[str, int] = {}
    for entry in folds:
        i, where = entry["fold"], entry["summary_file"]
        evaluated = [c["patient"] for c in entry["summary"]["cases"]]
        leaked = set(evaluated) & set(entry["train"])
        if leaked:
            raise PoolingError(
                f"fold {i}'s evaluation {where} scores {len(leaked)} patients its model trained on "
                f"({_names(leaked)}): not out of fold. Evaluate fold {i}'s model on its own fold (delete "
                f"{where} and rerun python -m pipeline crossval)."
            )
        if sorted(evaluated) != sorted(entry["patients"]):
            extra, lacking = set(evaluated) - set(entry["patients"]), set(entry["patients"]) - set(evaluated)
            raise PoolingError(
                f"fold {i}'s evaluation {where} does not score exactly fold {i}'s patients (not in the fold: "
                f"{_names(extra) or 'none'}; missing: {_names(lacking) or 'none'}). Delete {where} and rerun "
                "python -m pipeline crossval to evaluate the fold on its own patients."
            )
        for patient in evaluated:
            if patient in seen:
                raise PoolingError(
                    f"patient {patient} is scored by folds {seen[patient]} and {i}: the fold file puts it in "
                    "two folds. Delete the fold file and retrain every fold."
                )
            seen[patient] = i
    missing = set(all_patients) - set(seen)
    if missing:
        raise PoolingError(
            f"no fold scores {len(missing)} patients ({_names(missing)}): run the missing folds"
        )


def _record(values: dict) -> dict:
    """A summary.json record back to evaluate_volumes' numbers (None: NaN, or inf for one empty mask)."""
    out = dict(values)
    for key in ("dice", "iou", "fp_aware_dice"):
        out[key] = math.nan if out.get(key) is None else out[key]
    if out.get("hd95") is None:
        out["hd95"] = math.nan if out.get("empty") else math.inf
    return out


def _same(folds: Sequence[dict], key: str) -> Any:
    values = {str(entry["summary"].get(key)) for entry in folds}
    if len(values) > 1:
        raise PoolingError(
            f"the folds were evaluated with different {key} ({', '.join(sorted(values))}): evaluate every "
            f"fold with the same --{key}"
        )
    return folds[0]["summary"].get(key)


def pool_folds(
    folds: Sequence[dict], all_patients: Sequence[str], samples: int = BOOTSTRAP_SAMPLES, seed: int = 0
) -> dict:
    """The pooled out-of-fold summary (module docstring).

    Args:
        folds: per fold ``{"fold", "patients", "train", "summary", "summary_file", "run",
            "masks_dir"}`` (see :func:`check_out_of_fold`).
        all_patients: the patients of the fold file.
        samples, seed: of the bootstrap. Defaults 10,000 and 0.

    Raises:
        PoolingError: an evaluation is not out of fold, or the folds were evaluated differently.
    """
    folds = sorted(folds, key=lambda e: e["fold"])
    check_out_of_fold(folds, all_patients)
    cases = []
    for entry in folds:
        for case in entry["summary"]["cases"]:
            masks = Path(entry["masks_dir"]) / f"{case['patient']}.npz"
            cases.append(
                dict(
                    case, fold=entry["fold"], checkpoint=entry["summary"].get("checkpoint"), masks=str(masks)
                )
            )
    cases.sort(key=lambda c: c["patient"])
    variants = list(folds[0]["summary"]["aggregates"])
    aggregates = {}
    for variant in variants:
        records = [_record(c["metrics"][variant]) for c in cases]
        figures = {key: metrics.summarize(r[key] for r in records) for key in ("dice", "iou", "hd95")}
        figures.update(detection.detection_aggregates(records))
        dice = [r["dice"] for r in records]
        figures["dice"]["mean_ci95"] = bootstrap_ci(dice, samples, seed, statistic="mean")
        figures["dice"]["median_ci95"] = bootstrap_ci(dice, samples, seed, statistic="median")
        figures["fold_dice"] = [
            dict(
                metrics.summarize(r["dice"] for r, c in zip(records, cases) if c["fold"] == e["fold"]),
                fold=e["fold"],
            )
            for e in folds
        ]
        aggregates[variant] = figures
    return {
        "threshold": _same(folds, "threshold"),
        "min_component_voxels": _same(folds, "min_component_voxels"),
        "voxel_spacing_mm": _same(folds, "voxel_spacing_mm"),
        "folds": len(folds),
        "n_patients": len(cases),
        "cases": cases,
        "aggregates": aggregates,
        "per_fold": [
            {
                "fold": e["fold"],
                "run": e.get("run"),
                "summary": str(e["summary_file"]),
                "patients": len(e["patients"]),
            }
            for e in folds
        ],
        "bootstrap": {
            "samples": samples,
            "seed": seed,
            "level": LEVEL,
            "method": "percentile",
            "over": "patients",
        },
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "note": (
            "Out-of-fold: every patient is scored by the fold model that did not train on it. Per-patient "
            "records as in evaluate.json's summary.json (plus fold, checkpoint and masks, the .npz of the "
            "masks scored). Aggregates over all patients of all folds; dice.mean_ci95 and dice.median_ci95: "
            "95% percentile bootstrap intervals over patients (patients with an undefined Dice left out); "
            "fold_dice: each fold's own Dice statistics over its patients, in fold order."
        ),
    }


def write_pooled(out_dir: str | Path, pooled: dict, variant: str = "threshold") -> dict[str, Path]:
    """Write ``summary.json`` and the per-patient Dice chart of ``variant`` into ``out_dir``."""
    from pipeline.evaluation import figures

    out = Path(out_dir)
    files = {"summary": write_json(out / "summary.json", pooled)}
    shown = {c["patient"]: c["metrics"][variant] for c in pooled["cases"]}
    per_patient = {p: (math.nan if v["dice"] is None else v["dice"]) for p, v in shown.items()}
    lesion_free = {p: v["fp_voxels"] for p, v in shown.items() if not v["has_lesion"]}
    title = f"Out-of-fold per-patient Dice ({pooled['folds']}-fold cross-validation, {variant})"
    files["dice_chart"] = figures.dice_bar_chart(
        per_patient, out / "per_patient_dice.png", title=title, lesion_free_fp=lesion_free
    )
    return files
