"""Two evaluations of the same patients compared patient by patient (``compare --paired``).

Input: two ``summary.json`` of ``bundle/configs/evaluate.json`` (the layout of
:func:`pipeline.evaluation.volume_evaluation.evaluate_volumes`: ``cases[*].patient`` and
``cases[*].metrics[<option>][<metric>]`` with ``has_lesion``). Output: one JSON-ready dict.

The rules, all written into the result:

- The difference is ``B - A`` per patient, in the metric's units (for ``hd95`` and the
  false-positive volumes lower is better, so a positive difference is B worse).
- Patients paired: those whose value is a number in both runs. For ``dice``, ``iou`` and
  ``hd95`` only patients with a lesion: on a lesion-free patient Dice is undefined (nothing to find,
  nothing found) or 0 (any false positive), a detection question, so those patients are listed
  apart with their false-positive voxels and whether each run detected them. A patient with a
  lesion whose value is null in a run (``hd95`` with an empty prediction) is left out and named.
- Mean difference with a 95 % bootstrap confidence interval: ``n_resamples`` resamples of the paired
  patients with replacement (numpy ``default_rng(seed)``), the 2.5th and 97.5th percentiles of the
  resampled means (percentile method, numpy's linear interpolation).
- Wilcoxon signed-rank p-value: ``scipy.stats.wilcoxon`` of the differences (rounded to 12 decimals
  so float noise makes no false ranks), two-sided, ``zero_method="wilcox"``: patients with a
  difference of exactly 0 are dropped. scipy's ``method="auto"``: the exact distribution for up
  to 50 differences without ties or zeros; with ties or zeros exhaustive permutations up to 13,
  the normal approximation above. No non-zero difference: p is null (nothing to test).
  Below 6 non-zero differences the smallest two-sided p the test can give is
  ``2 / 2**n`` (0.0625 for 5), so it cannot reach 0.05; a note says so.
- Outcomes per patient: "B better", "A better" or "tie" when ``|B - A| <= tie_tolerance``
  (default 0.001, in the metric's units).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

# per-patient metrics of summary.json that can be compared, and whether higher is better
METRICS = {
    "dice": True,
    "iou": True,
    "fp_aware_dice": True,
    "hd95": False,
    "fp_voxels": False,
    "fp_voxels_lesion_free_slices": False,
    "fp_ml": False,
    "fp_ml_lesion_free_slices": False,
}
LESION_ONLY = frozenset({"dice", "iou", "hd95"})  # undefined or 0 on a lesion-free patient
DEFAULT_OPTION = "threshold"
DEFAULT_METRIC = "dice"
N_RESAMPLES = 10_000
SEED = 0
TIE_TOLERANCE = 1e-3
LEVEL = 0.95
MIN_WILCOXON = 6  # non-zero differences below which a two-sided p cannot reach 0.05


class ComparisonRefused(ValueError):
    """The two evaluations cannot be compared patient by patient; the message says why and the fix."""


def _names(names: Sequence[str], limit: int = 10) -> str:
    shown = ", ".join(sorted(names)[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def patient_records(summary: Mapping[str, Any], option: str, label: str) -> dict[str, dict]:
    """patient -> the per-patient record of ``option`` in one summary.json.

    Raises:
        ComparisonRefused: no per-patient records, or none for ``option`` (names the options there).
    """
    cases = summary.get("cases")
    if not isinstance(cases, list) or not cases:
        raise ComparisonRefused(
            f"the evaluation of {label} has no per-patient records ('cases' in summary.json); "
            "evaluate the run again with this checkout's bundle/configs/evaluate.json"
        )
    options = sorted({name for case in cases for name in case.get("metrics", {})})
    if option not in options:
        raise ComparisonRefused(
            f"the evaluation of {label} has no post-processing option {option!r}; options: "
            f"{', '.join(options)} (--option)"
        )
    return {str(case["patient"]): case["metrics"][option] for case in cases}


def check_metric(records: Mapping[str, Mapping[str, Any]], metric: str, label: str) -> None:
    """Raise ComparisonRefused unless ``metric`` is a comparable per-patient metric of ``records``."""
    present = sorted(m for m in METRICS if any(m in r for r in records.values()))
    if metric not in present:
        raise ComparisonRefused(
            f"{metric!r} is no per-patient metric of the evaluation of {label}; metrics: "
            f"{', '.join(present)} (--metric)"
        )


def _number(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def bootstrap_interval(
    differences: Sequence[float], n_resamples: int = N_RESAMPLES, seed: int = SEED, level: float = LEVEL
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean: resample the patients with replacement."""
    values = np.asarray(differences, dtype=np.float64)
    if values.size == 0 or n_resamples < 1:
        raise ValueError("bootstrap_interval needs at least one difference and one resample")
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, values.size, size=(n_resamples, values.size))].mean(axis=1)
    tail = (1.0 - level) / 2.0 * 100.0
    low, high = np.percentile(means, [tail, 100.0 - tail])
    return float(low), float(high)


def wilcoxon_test(differences: Sequence[float]) -> dict[str, Any]:
    """Two-sided Wilcoxon signed-rank test of the differences, zeros dropped (see the module)."""
    from scipy import stats

    values = np.round(np.asarray(differences, dtype=np.float64), 12)
    nonzero = int(np.count_nonzero(values))
    result: dict[str, Any] = {
        "p_value": None,
        "statistic": None,
        "n_nonzero": nonzero,
        "n_zero": int(values.size - nonzero),
        "zero_method": "wilcox",
        "alternative": "two-sided",
        "note": None,
    }
    if nonzero == 0:
        result["note"] = "no non-zero difference: the runs agree on every paired patient, no p-value"
        return result
    test = stats.wilcoxon(values, zero_method="wilcox", alternative="two-sided", method="auto")
    result["p_value"], result["statistic"] = float(test.pvalue), float(test.statistic)
    if nonzero < MIN_WILCOXON:
        result["note"] = (
            f"only {nonzero} non-zero difference(s): the smallest two-sided p the test can give is "
            f"2/2^{nonzero} = {2.0 / 2**nonzero:.4g}, so it cannot reach 0.05"
        )
    return result


def outcome(difference: float, higher_is_better: bool, tolerance: float = TIE_TOLERANCE) -> str:
    """ "B better", "A better" or "tie" (``|difference| <= tolerance``) for a difference B - A."""
    if abs(difference) <= tolerance:
        return "tie"
    return "B better" if (difference > 0) == higher_is_better else "A better"


def paired_comparison(
    summary_a: Mapping[str, Any],
    summary_b: Mapping[str, Any],
    option: str = DEFAULT_OPTION,
    metric: str = DEFAULT_METRIC,
    labels: tuple[str, str] = ("A", "B"),
    n_resamples: int = N_RESAMPLES,
    seed: int = SEED,
    tie_tolerance: float = TIE_TOLERANCE,
) -> dict[str, Any]:
    """The paired comparison of two evaluations of the same patients (module docstring: the rules).

    Raises:
        ComparisonRefused: the patient sets or their lesion status differ (naming the patients),
            the option or metric is missing (naming those present), or no patient can be paired.
    """
    records_a = patient_records(summary_a, option, labels[0])
    records_b = patient_records(summary_b, option, labels[1])
    only_a, only_b = sorted(set(records_a) - set(records_b)), sorted(set(records_b) - set(records_a))
    if only_a or only_b:
        raise ComparisonRefused(
            f"{labels[0]} and {labels[1]} were not evaluated on the same patients: only in "
            f"{labels[0]}: {_names(only_a) or 'none'}; only in {labels[1]}: {_names(only_b) or 'none'}. "
            "Evaluate both on the same dataset, split and --eval_set"
        )
    for records, label in ((records_a, labels[0]), (records_b, labels[1])):
        check_metric(records, metric, label)
    patients = sorted(records_a)
    differ = [p for p in patients if bool(records_a[p]["has_lesion"]) != bool(records_b[p]["has_lesion"])]
    if differ:
        raise ComparisonRefused(
            f"the true masks differ between {labels[0]} and {labels[1]} (a lesion in one evaluation, "
            f"none in the other) for {_names(differ)}: not the same data"
        )
    higher = METRICS[metric]
    rows, lesion_free, undefined = [], [], []
    for patient in patients:
        a, b = records_a[patient], records_b[patient]
        has_lesion = bool(a["has_lesion"])
        if metric in LESION_ONLY and not has_lesion:
            lesion_free.append(
                {
                    "patient": patient,
                    "a_fp_voxels": a.get("fp_voxels"),
                    "b_fp_voxels": b.get("fp_voxels"),
                    "a_detected": a.get("detected"),
                    "b_detected": b.get("detected"),
                }
            )
            continue
        va, vb = _number(a.get(metric)), _number(b.get(metric))
        if va is None or vb is None:
            undefined.append({"patient": patient, "a": va, "b": vb})
            continue
        d = round(vb - va, 12)
        row = {"patient": patient, "has_lesion": has_lesion, "a": va, "b": vb, "difference": d}
        rows.append(dict(row, outcome=outcome(d, higher, tie_tolerance)))
    if not rows:
        raise ComparisonRefused(
            f"no patient has {metric!r} of option {option!r} defined in both {labels[0]} and {labels[1]}"
        )
    differences = [r["difference"] for r in rows]
    low, high = bootstrap_interval(differences, n_resamples, seed)
    counts = {k: sum(r["outcome"] == k for r in rows) for k in ("B better", "A better", "tie")}
    return {
        "option": option,
        "metric": metric,
        "higher_is_better": higher,
        "difference": "B - A",
        "n_patients": len(patients),
        "n_paired": len(rows),
        "mean_a": float(np.mean([r["a"] for r in rows])),
        "mean_b": float(np.mean([r["b"] for r in rows])),
        "mean_difference": float(np.mean(differences)),
        "median_difference": float(np.median(differences)),
        "bootstrap": {
            "level": LEVEL,
            "low": low,
            "high": high,
            "n_resamples": n_resamples,
            "seed": seed,
            "method": "percentile, resampling patients with replacement",
        },
        "wilcoxon": wilcoxon_test(differences),
        "outcomes": {
            "b_better": counts["B better"],
            "a_better": counts["A better"],
            "ties": counts["tie"],
            "tie_tolerance": tie_tolerance,
        },
        "patients": rows,
        "lesion_free": lesion_free,
        "undefined": undefined,
    }
