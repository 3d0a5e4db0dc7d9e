"""Does an uncertainty score mean something? Its rank correlation with Dice, and what flagging gains.

For each score of :mod:`pipeline.evaluation.uncertainty` and each post-processing option,
evaluate.json (``uncertainty`` set) reports over the evaluated patients (:func:`validate_score`):

- ``spearman`` (and ``spearman_p``): Spearman's rank correlation
  (``scipy.stats.spearmanr``) between the score and the patient's per-volume Dice, over the
  patients whose Dice is defined. A useful score has a clearly negative one: the more
  uncertain, the worse the mask. None with fewer than 3 such patients or a constant score.
- ``threshold``: the flag threshold, a patient being flagged when its score is above it. Chosen
  on the evaluated (validation) patients as the ``1 - flag_rate`` quantile of their scores
  (numpy's linear interpolation), so that about ``flag_rate`` of them (default 0.2) are flagged
  for a careful review; or the threshold given (``uncertainty_threshold``), to measure the one
  inference uses.
- ``dice_unflagged``, ``dice_flagged``: the per-volume Dice
  (:func:`pipeline.evaluation.metrics.summarize`: mean, median, counts) of the patients not
  flagged and of those flagged. A score that works gives ``dice_unflagged`` above the option's
  ``dice`` (all patients).
- ``counts``: ``correlated`` (patients in the correlation) and ``flagged``; in a dict, so that
  MLflow does not log them as metrics.

The figures go into the option's aggregates as ``uncertainty_<score>_<figure>`` (so MLflow logs
them as ``eval_<option>_uncertainty_<score>_<figure>[_mean|_median]``) and the per-patient scores
and flags into the option's per-case metrics (:func:`add_uncertainty`).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from pipeline.evaluation.metrics import summarize
from pipeline.evaluation.uncertainty import SCORES

logger = logging.getLogger(__name__)

DEFAULT_FLAG_RATE = 0.2
NOTE = (
    "Per option, uncertainty_<score>_spearman is Spearman's rank correlation between the score and the "
    "per-volume Dice over the patients with a defined Dice (negative: the more uncertain, the worse the "
    "mask); a patient is flagged when its score is above uncertainty_<score>_threshold (the 1 - "
    "flag_rate quantile of these patients' scores unless a threshold was given); dice_unflagged above "
    "the option's dice means flagging removes the worse masks. Scores: disagreement = 1 - the Dice expected "
    "between the samples' masks and the mask; entropy = mean binary entropy (bits) of the mean sample "
    "probability over the voxels the mask or any sample calls lesion."
)


def check_flag_rate(flag_rate: float) -> float:
    """``flag_rate`` as a float in (0, 1), else ValueError naming the key and the value."""
    if isinstance(flag_rate, bool) or not 0.0 < float(flag_rate) < 1.0:
        raise ValueError(
            f"uncertainty_flag_rate must be in (0, 1) (the share of patients flagged), not {flag_rate!r}"
        )
    return float(flag_rate)


def check_score_threshold(threshold: float | str | None) -> float | None:
    """``uncertainty_threshold`` as a float >= 0, or None (also for "null" and ""), else ValueError."""
    if threshold is None or str(threshold).strip().lower() in ("", "null", "none"):
        return None
    try:
        value = float(threshold)
    except (TypeError, ValueError):
        value = -1.0
    if isinstance(threshold, bool) or not value >= 0.0:
        raise ValueError(
            f"uncertainty_threshold must be a number >= 0 (flag a patient whose score is above it) or "
            f"null, not {threshold!r}"
        )
    return value


def flag_threshold(scores: Sequence[float], flag_rate: float = DEFAULT_FLAG_RATE) -> float | None:
    """The ``1 - flag_rate`` quantile of the finite ``scores`` (None without any)."""
    values = np.asarray(scores, dtype=np.float64)
    values = values[np.isfinite(values)]
    return float(np.quantile(values, 1.0 - check_flag_rate(flag_rate))) if values.size else None


def spearman(scores: Sequence[float], dice: Sequence[float]) -> tuple[float | None, float | None, int]:
    """Spearman's rho and its p-value between ``scores`` and ``dice`` over the pairs where both are
    finite, and their count; (None, None, n) with fewer than 3 pairs or a constant side."""
    from scipy import stats

    x, y = np.asarray(scores, dtype=np.float64), np.asarray(dice, dtype=np.float64)
    keep = np.isfinite(x) & np.isfinite(y)
    n = int(keep.sum())
    if n < 3 or np.ptp(x[keep]) == 0 or np.ptp(y[keep]) == 0:
        return None, None, n
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = stats.spearmanr(x[keep], y[keep])
    return float(result.statistic), float(result.pvalue), n


def validate_score(
    scores: Sequence[float],
    dice: Sequence[float],
    flag_rate: float = DEFAULT_FLAG_RATE,
    threshold: float | None = None,
) -> dict[str, Any]:
    """The figures of the module docstring for one score over patients.

    Args:
        scores: the score of each patient.
        dice: the per-volume Dice of each patient, same order (NaN: undefined, both masks empty).
        flag_rate: the share of patients flagged when ``threshold`` is None. Default 0.2.
        threshold: flag above it. Default None: the ``1 - flag_rate`` quantile of ``scores``.
    """
    scores_array = np.asarray(scores, dtype=np.float64)
    dice_array = np.asarray(dice, dtype=np.float64)
    if threshold is None:
        threshold = flag_threshold(scores_array, flag_rate)
    flagged = scores_array > (np.inf if threshold is None else float(threshold))
    rho, p_value, n = spearman(scores_array, dice_array)
    return {
        "spearman": rho,
        "spearman_p": p_value,
        "threshold": None if threshold is None else float(threshold),
        "counts": {"correlated": n, "flagged": int(flagged.sum())},
        "dice_unflagged": summarize(dice_array[~flagged]),
        "dice_flagged": summarize(dice_array[flagged]),
    }


def add_uncertainty(
    summary: dict,
    scores: dict[str, dict[str, list[float]]],
    flag_rate: float = DEFAULT_FLAG_RATE,
    threshold: float | None = None,
) -> None:
    """Add the figures to ``summary`` (evaluate_volumes' dict, cases in patient order), in place.

    Args:
        summary: with ``cases`` and ``aggregates``.
        scores: option -> score name (:data:`SCORES`) -> one value per case, in the cases' order.
        flag_rate, threshold: as for :func:`validate_score`.
    """
    for option, by_score in scores.items():
        dice = [c["metrics"][option]["dice"] for c in summary["cases"]]
        dice = [np.nan if value is None else value for value in dice]
        for name in SCORES:
            figures = validate_score(by_score[name], dice, flag_rate, threshold)
            for key, value in figures.items():
                summary["aggregates"][option][f"uncertainty_{name}_{key}"] = value
            limit = np.inf if figures["threshold"] is None else figures["threshold"]
            for case, value in zip(summary["cases"], by_score[name]):
                case["metrics"][option][f"uncertainty_{name}"] = float(value)
                case["metrics"][option][f"uncertainty_{name}_flagged"] = bool(value > limit)


def log_figures(summary: dict) -> None:
    """One line per option and score with the figures, when ``summary`` has them."""
    for option, figures in summary["aggregates"].items():
        for name in SCORES:
            prefix = f"uncertainty_{name}_"
            got = {key[len(prefix) :]: value for key, value in figures.items() if key.startswith(prefix)}
            if not got:
                continue
            logger.info(
                "%-14s uncertainty %-12s Spearman rho with Dice %s (p %s, %d patients); flagged above "
                "%s: %d; Dice mean of the unflagged %s, of all %s, of the flagged %s",
                option,
                name,
                _text(got["spearman"], "+.3f"),
                _text(got["spearman_p"], ".3g"),
                got["counts"]["correlated"],
                _text(got["threshold"], ".4g"),
                got["counts"]["flagged"],
                _text(got["dice_unflagged"]["mean"]),
                _text(figures["dice"]["mean"]),
                _text(got["dice_flagged"]["mean"]),
            )


def _text(value: float | None, spec: str = ".4f") -> str:
    return "n/a" if value is None else format(value, spec)
