"""The exported bundle's post-processing defaults: the option that scored best in the evaluation.

The evaluation (evaluate.json, :mod:`pipeline.evaluation.volume_evaluation`) scores four options
that inference can apply: ``threshold``, ``threshold+lcc`` (keep the largest 3-D component),
``tta`` (flip test-time augmentation) and ``tta+lcc``. The bundle gets the one with the highest
per-volume Dice mean (``eval_<option>_dice_mean``, from the run's ``evaluation/summary.json`` or
its MLflow metrics); a tie goes to the simpler option (the order above). Without an evaluation of
these options, the plain threshold, recorded as such. The ``+mcs`` options are evaluated too but
are no inference option, so they are not candidates.
"""

from __future__ import annotations

from collections.abc import Mapping

OPTIONS = {
    "threshold": {"tta": False, "largest_component": False},
    "threshold+lcc": {"tta": False, "largest_component": True},
    "tta": {"tta": True, "largest_component": False},
    "tta+lcc": {"tta": True, "largest_component": True},
}


def metric_name(option: str) -> str:
    return f"eval_{option.replace('+', '_')}_dice_mean"


def best_option(metrics: Mapping[str, float]) -> dict:
    """The post-processing defaults for the bundle and why (the ``postprocessing`` of metadata.json).

    Returns:
        ``{"option", "tta", "largest_component", "per_volume_dice_mean": {option: value}, "reason"}``.
    """
    scores = {name: float(metrics[metric_name(name)]) for name in OPTIONS if metric_name(name) in metrics}
    patients = metrics.get("eval_patients")
    over = f" over {int(patients)} patients" if patients else ""
    if not scores:
        return {
            "option": "threshold",
            **OPTIONS["threshold"],
            "per_volume_dice_mean": {},
            "reason": "no evaluation of the model was found (run evaluate.json on model.pt, then export "
            "again): the plain threshold",
        }
    best = max(scores, key=lambda name: (scores[name], -list(OPTIONS).index(name)))
    listed = ", ".join(f"{name} {value:.4f}" for name, value in scores.items())
    return {
        "option": best,
        **OPTIONS[best],
        "per_volume_dice_mean": {name: round(value, 6) for name, value in scores.items()},
        "reason": f"highest per-volume Dice mean of the evaluation{over} ({listed}); a tie goes to "
        "the simpler option",
    }
