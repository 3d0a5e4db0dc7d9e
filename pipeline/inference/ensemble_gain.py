"""``python -m pipeline ensemble-gain``: what a fold ensemble gains over its single fold models, on
the same held-out patients.

From the repository root::

    python -m pipeline synth --out outputs/phantom_heldout --patients 20 --seed 7
    python -m pipeline ensemble-gain --crossval outputs/crossval/<name> --dataset_dir outputs/phantom_heldout
    #   --config_file "['bundle/configs/train.json','bundle/configs/demo.json']"  (the cross-validation's)
    #   --option tta   --KEY VALUE (any evaluate.json override, e.g. --threshold 0.5)

1. evaluates, with evaluate.json on every patient of ``--dataset_dir`` (``--eval_set all``), the
   ensemble (``--crossval``) and each fold model (``--ckpt_path <fold run>/models/model.pt``), each
   into ``<crossval folder>/heldout-<dataset folder>/{ensemble,fold<i>}/`` (summary.json,
   per_slice.csv; no pictures). These evaluations are not logged to MLflow: a fold's MLflow run
   keeps its out-of-fold evaluation. An evaluation already there for the same model is reused.
   The ensemble's evaluation refuses patients its folds trained on
   (:func:`pipeline.inference.ensemble.held_out`);
2. compares them patient by patient (:func:`ensemble_gain`, with
   :func:`pipeline.tracking.paired.paired_comparison`): the ensemble against each fold model and
   against the folds' mean per-patient Dice (the expected Dice of one fold model picked at random),
   difference ensemble - fold, 95% bootstrap interval over patients and Wilcoxon p-value, on the
   per-volume Dice of ``--option`` (default ``threshold``) of the patients with a lesion;
3. writes ``gain_<option>.json`` beside them (``+`` written ``_``) and prints the table.
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.inference.fold_models import crossval_folds
from pipeline.tracking.paired import paired_comparison

logger = logging.getLogger(__name__)

CONFIGS = Path(__file__).resolve().parents[2] / "bundle" / "configs"
ENSEMBLE = "ensemble"
FOLD_MEAN = "fold mean"


def _mean_of_folds(summaries: Sequence[Mapping[str, Any]], option: str, metric: str) -> dict:
    """A summary whose per-patient ``metric`` is the mean over the folds (those where it is defined)."""
    cases = {}
    for summary in summaries:
        for case in summary.get("cases", []):
            record = case.get("metrics", {}).get(option)
            if record is None:
                continue
            entry = cases.setdefault(case["patient"], {"has_lesion": record["has_lesion"], "values": []})
            if record.get(metric) is not None:
                entry["values"].append(float(record[metric]))
    return {
        "cases": [
            {
                "patient": patient,
                "metrics": {
                    option: {
                        "has_lesion": entry["has_lesion"],
                        metric: float(np.mean(entry["values"])) if entry["values"] else None,
                    }
                },
            }
            for patient, entry in sorted(cases.items())
        ]
    }


def _brief(comparison: dict) -> dict:
    keep = ("n_paired", "mean_a", "mean_b", "mean_difference", "median_difference", "bootstrap", "wilcoxon")
    return {k: comparison[k] for k in keep} | {"outcomes": comparison["outcomes"]}


def ensemble_gain(
    ensemble: Mapping[str, Any],
    folds: Sequence[Mapping[str, Any]],
    option: str = "threshold",
    metric: str = "dice",
    n_resamples: int = 10_000,
    seed: int = 0,
) -> dict[str, Any]:
    """The ensemble's summary.json against each fold model's and their per-patient mean.

    Args:
        ensemble: the ensemble's evaluate.json summary.
        folds: fold ``i``'s summary at index ``i``, on the same patients.
        option, metric: the per-patient figure compared (see :mod:`pipeline.tracking.paired`).
            Defaults "threshold", "dice".
        n_resamples, seed: of the bootstrap intervals. Defaults 10,000 and 0.

    Returns:
        ``{"option", "metric", "difference": "ensemble - fold", "patients": [{"patient",
        "ensemble", "folds", "fold_mean"}], "folds": [comparison per fold], "fold_mean": comparison}``,
        each comparison as :func:`paired_comparison` gives it, with A the fold (or their mean) and
        B the ensemble.

    Raises:
        ComparisonRefused: the evaluations are not of the same patients (naming them).
    """
    if not folds:
        raise ValueError("ensemble_gain needs the evaluation of at least one fold model")
    labels = [f"fold {i}" for i in range(len(folds))]
    compared = [
        paired_comparison(fold, ensemble, option, metric, (label, ENSEMBLE), n_resamples, seed)
        for fold, label in zip(folds, labels)
    ]
    mean = _mean_of_folds(folds, option, metric)
    against_mean = paired_comparison(mean, ensemble, option, metric, (FOLD_MEAN, ENSEMBLE), n_resamples, seed)
    per_fold = [{r["patient"]: r["a"] for r in c["patients"]} for c in compared]
    patients = [
        {
            "patient": row["patient"],
            "ensemble": row["b"],
            "folds": [values.get(row["patient"]) for values in per_fold],
            "fold_mean": row["a"],
        }
        for row in against_mean["patients"]
    ]
    return {
        "option": option,
        "metric": metric,
        "difference": "ensemble - fold",
        "n_patients": against_mean["n_patients"],
        "patients": patients,
        "folds": [dict(_brief(c), fold=i) for i, c in enumerate(compared)],
        "fold_mean": _brief(against_mean),
        "lesion_free": against_mean["lesion_free"],
    }


def format_gain(gain: dict) -> str:
    """The printed table: one line per fold model and one for their mean."""
    lines = [
        f"Ensemble vs single fold models, per-patient {gain['metric']} of option {gain['option']}, "
        f"difference ensemble - fold over {gain['fold_mean']['n_paired']} patients with a lesion:",
        f"{'model':<10} {'mean':>7} {'ensemble':>9} {'gain':>8} {'95% CI':>19} {'Wilcoxon p':>11}  "
        "wins/losses/ties",
    ]
    rows = [(f"fold {c['fold']}", c) for c in gain["folds"]] + [(FOLD_MEAN, gain["fold_mean"])]
    for label, c in rows:
        boot, p, o = c["bootstrap"], c["wilcoxon"]["p_value"], c["outcomes"]
        interval = f"[{boot['low']:+.4f}, {boot['high']:+.4f}]"
        p_text = "n/a" if p is None else f"{p:.3g}"
        lines.append(
            f"{label:<10} {c['mean_a']:>7.4f} {c['mean_b']:>9.4f} {c['mean_difference']:>+8.4f} "
            f"{interval:>19} {p_text:>11}  {o['b_better']}/{o['a_better']}/{o['ties']}"
        )
    return "\n".join(lines)


def evaluate_command(
    files: list[str], target: list[str], eval_dir: Path, dataset_dir: str, pairs: list[str]
) -> list[str]:
    """evaluate.json of one model (``target``: ``--crossval F`` or ``--ckpt_path P``) on every patient."""
    listed = "[" + ",".join(repr(f) for f in [*files, str(CONFIGS / "evaluate.json")]) + "]"
    fixed = ["--dataset_dir", dataset_dir, "--eval_set", "all", "--eval_dir", str(eval_dir)]
    fixed += ["--pictures", "False", "--evaluation_report#tracking", "None"]  # fire's literals
    return [sys.executable, "-m", "monai.bundle", "run", "--config_file", listed, *target, *fixed, *pairs]


def _done(eval_dir: Path, checkpoint: str) -> dict | None:
    try:
        summary = json.loads((eval_dir / "summary.json").read_text())
    except (OSError, ValueError):
        return None
    same = Path(str(summary.get("checkpoint"))).resolve() == Path(checkpoint).resolve()
    return summary if same else None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--crossval", required=True, help="the cross-validation folder (or a fold run folder)"
    )
    parser.add_argument("--dataset_dir", required=True, help="held-out patients (kaggle_3m layout)")
    parser.add_argument("--config_file", help="the cross-validation's training configs (default train.json)")
    parser.add_argument(
        "--option", default="threshold", help="post-processing option compared (default threshold)"
    )
    known = parser.parse_known_args

    def keep_overrides(args=None, namespace=None):  # evaluate.json's --key value pairs are not argparse's
        namespace, extra = known(args, namespace)
        namespace.overrides = extra
        return namespace, []

    parser.parse_known_args = keep_overrides


def main(args: argparse.Namespace) -> int:
    from pipeline.evaluation.crossval_plan import config_files

    try:
        folds = crossval_folds(args.crossval)
        files = [f for f in config_files(args.config_file) if not f.endswith("crossval.json")]
        out = folds.folder / f"heldout-{Path(args.dataset_dir).resolve().name}"
        targets = [(ENSEMBLE, ["--crossval", str(folds.folder)], str(folds.folder))]
        targets += [(f"fold{i}", ["--ckpt_path", str(c)], str(c)) for i, c in enumerate(folds.checkpoints)]
        summaries = {}
        for name, target, checkpoint in targets:
            summaries[name] = _done(out / name, checkpoint)
            if summaries[name] is None:
                command = evaluate_command(files, target, out / name, args.dataset_dir, args.overrides)
                logger.info("Evaluating %s on %s", name, args.dataset_dir)
                if subprocess.run(command).returncode != 0:
                    raise RuntimeError(f"the evaluation of {name} failed: fix the cause above and rerun")
                summaries[name] = json.loads((out / name / "summary.json").read_text())
        fold_summaries = [summaries[f"fold{i}"] for i in range(len(folds.checkpoints))]
        gain = ensemble_gain(summaries[ENSEMBLE], fold_summaries, args.option)
    except (ValueError, RuntimeError, OSError) as error:  # ComparisonRefused is a ValueError
        logger.error("%s", error)
        return 1
    gain.update(crossval=folds.name, dataset_dir=str(Path(args.dataset_dir).resolve()))
    written = out / f"gain_{args.option.replace('+', '_')}.json"
    written.write_text(json.dumps(gain, indent=2, sort_keys=True) + "\n")
    print(format_gain(gain) + f"\n({written})")
    return 0
