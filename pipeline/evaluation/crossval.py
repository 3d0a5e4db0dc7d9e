"""``python -m pipeline crossval``: patient-level k-fold cross-validation with the bundle's recipe.

From the repository root::

    python -m pipeline crossval                               # 5 folds of train.json's recipe
    python -m pipeline crossval --folds 22 --dataset_dir /data/kaggle_3m   # Buda et al. 2019's protocol
    python -m pipeline crossval --config_file "['bundle/configs/train.json','bundle/configs/demo.json']"
    python -m pipeline crossval --fold 2                      # one fold only (another GPU or machine)
    python -m pipeline crossval --resume true                 # after a kill: continue where it stopped

Any other ``--key value`` is a bundle override, passed to every fold as to a training run
(``--epochs 10``, ``--seed 1``, ``--crossval_name NAME``, ``--threshold 0.5`` for the evaluation).

What it does, fold by fold (``--fold i`` or ``--fold "[0,3]"`` for some):

1. trains fold ``i``: ``python -m monai.bundle run training --config_file "[<files>,
   'bundle/configs/crossval.json']" --folds K --fold i ...``, a normal training run (run folder
   ``outputs/runs/<crossval_name>-fold<i>``, checkpoints, MLflow run nested in the parent run, resume
   with ``--fold i --resume true``) validated on fold ``i`` and trained on the others. The first
   fold deals the fold file (stratified by lesion volume, beside the split file: see
   :mod:`pipeline.data.folds`) and every fold reuses it. A fold trained already is kept; an
   interrupted one is resumed with ``--resume true`` and refused without it; a fold whose
   recorded settings differ from this command's is refused, naming them;
2. evaluates it out of fold: evaluate.json on its ``model.pt`` (its own validation fold), saving
   the masks (:mod:`pipeline.evaluation.pooled_masks`);
3. when every fold is evaluated, pools them (:mod:`pipeline.evaluation.pooled`): every patient
   scored by the fold model that did not see it; ``outputs/crossval/<crossval_name>/summary.json``
   (per-patient records, pooled aggregates with 95% bootstrap intervals, each fold's Dice) and
   ``per_patient_dice.png``, logged to the parent MLflow run (:mod:`pipeline.evaluation.pooled_tracking`).

Folds may run on different machines (``--fold i`` each, sharing ``outputs/`` and the tracking
server); any later ``python -m pipeline crossval`` with the same settings pools them.
"""

from __future__ import annotations

import argparse
import ast
import logging
import shlex
import subprocess
from pathlib import Path

from pipeline.data.discovery import DatasetError, discover, fingerprint
from pipeline.data.folds import load_or_create_folds
from pipeline.evaluation.crossval_plan import CrossvalPlan, config_files, parse_overrides
from pipeline.evaluation.pooled import BOOTSTRAP_SAMPLES, pool_folds, write_pooled
from pipeline.evaluation.pooled_tracking import log_pooled
from pipeline.flags import truthy

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.usage = (
        "python -m pipeline crossval [--config_file FILES] [--folds K] [--fold I] [--resume true] "
        "[--KEY VALUE ...]"
    )
    parser.epilog = "Other --KEY VALUE pairs are bundle overrides, passed to every fold (e.g. --epochs 10)."
    parser.add_argument(
        "--config_file", help="the training config files, as for monai.bundle (default train.json)"
    )
    parser.add_argument("--folds", help="number of folds (default 5, crossval.json's; 22: Buda et al. 2019)")
    parser.add_argument("--fold", help="run only this fold (0..K-1) or these ('[0,3]'); default: all")
    parser.add_argument(
        "--resume", default="false", help="continue interrupted folds (true/false, default false)"
    )
    parser.add_argument(
        "--bootstrap_samples", type=int, default=BOOTSTRAP_SAMPLES, help="resamples (default 10000)"
    )
    known = parser.parse_known_args

    def keep_overrides(args=None, namespace=None):  # the bundle's --key value pairs are not argparse's
        namespace, extra = known(args, namespace)
        namespace.overrides = extra
        return namespace, []

    parser.parse_known_args = keep_overrides


def selected_folds(fold: str | None, folds: int) -> list[int]:
    """The folds ``--fold`` names (default all), each checked to be in 0..folds-1."""
    if fold is None:
        return list(range(folds))
    try:
        value = ast.literal_eval(fold)
    except (ValueError, SyntaxError):
        value = fold
    chosen = value if isinstance(value, list | tuple) else [value]
    if not chosen or not all(
        isinstance(i, int) and not isinstance(i, bool) and 0 <= i < folds for i in chosen
    ):
        raise ValueError(
            f"--fold must be a fold from 0 to {folds - 1} or a list of them ('[0,3]'), not {fold!r}"
        )
    return sorted(set(chosen))


def check_folds(plan: CrossvalPlan, chosen: list[int], resume: bool) -> None:
    """Refuse before any work: folds trained with other settings, interrupted ones without --resume."""
    for i in range(plan.folds):
        differ = plan.settings_differ(i)
        if differ:
            raise ValueError(
                f"fold {i}'s run {plan.run_dir(i)} was trained with other settings than this command "
                f"({'; '.join(differ[:5])}): rerun with that run's settings, or pass --crossval_name NEW for "
                "a new cross-validation"
            )
    for i in chosen:
        state = plan.state(i)
        if state in ("interrupted", "empty") and not resume:
            raise ValueError(
                f"fold {i}'s run {plan.run_dir(i)} was interrupted before it finished: pass --resume true to "
                "continue the cross-validation, or --crossval_name NEW for a new one"
            )


def shell_words(command: list[str]) -> str:
    """``command`` as a line to paste in a shell, a config list in double quotes as the README writes it."""
    words = []
    for word in command:
        plain = word.replace("#", "_")  # a '#' inside a word starts no comment
        if shlex.quote(plain) == plain and not word.startswith("#"):
            words.append(word)
        elif "'" in word and not set('$`\\"!') & set(word):
            words.append(f'"{word}"')
        else:
            words.append(shlex.quote(word))
    return " ".join(words)


def _run(command: list[str], what: str, plan: CrossvalPlan) -> None:
    logger.info("%s: %s", what, shell_words(command))
    result = subprocess.run(command, env=plan.environment())
    if result.returncode != 0:
        raise RuntimeError(
            f"{what} failed (exit code {result.returncode}); fix the cause above and rerun this command with "
            "--resume true (finished folds are kept)"
        )


def run_fold(plan: CrossvalPlan, i: int) -> None:
    """Train fold ``i`` (or resume it, or keep it) and evaluate it out of fold."""
    state = plan.state(i)
    if state == "empty":
        aside = plan.set_aside(i)
        logger.warning("Fold %d's run held no checkpoint (killed in its first epoch): moved to %s", i, aside)
    if state == "trained":
        logger.info("Fold %d of %d: trained already (%s)", i, plan.folds, plan.run_dir(i))
    else:
        resume = state == "interrupted"
        _run(
            plan.train_command(i, resume),
            f"Fold {i} of {plan.folds}: {'resuming' if resume else 'training'}",
            plan,
        )
    if plan.evaluated(i):
        logger.info("Fold %d of %d: evaluated already (%s)", i, plan.folds, plan.eval_dir(i))
    else:
        _run(plan.evaluate_command(i), f"Fold {i} of {plan.folds}: out-of-fold evaluation", plan)


def pool(plan: CrossvalPlan, samples: int, seed: int = 0) -> dict | None:
    """Pool the folds when every one is evaluated (else say which are missing); the pooled summary."""
    missing = [i for i in range(plan.folds) if not plan.evaluated(i)]
    if missing:
        logger.info(
            "Not pooled yet: folds %s are not evaluated; run them (python -m pipeline crossval --fold I, "
            "same settings) and any crossval command pools them",
            ", ".join(map(str, missing)),
        )
        return None
    records = discover(plan.dataset_dir)
    patients = sorted({r["patient"] for r in records})

    def no_fold_file() -> dict:
        raise DatasetError(
            f"the fold file {plan.fold_file} is missing; it was written by the fold runs: restore it"
        )

    dealt = load_or_create_folds(
        patients, no_fold_file, plan.fold_file, plan.folds, fingerprint=fingerprint(records)
    )
    entries = [plan.fold_entry(i, dealt["folds"][i]) for i in range(plan.folds)]
    pooled = pool_folds(entries, patients, samples=samples, seed=seed)
    pooled.update(crossval=plan.name, fold_file=str(plan.fold_file))
    files = write_pooled(plan.out_dir, pooled)
    files["fold_file"] = plan.fold_file
    params = {
        "folds": plan.folds,
        "fold_file": plan.fold_file,
        "bootstrap_samples": samples,
        "bootstrap_seed": seed,
    }
    log_pooled(pooled, files, [plan.run_dir(i) for i in range(plan.folds)], params)
    print(headline(pooled, files["summary"]))
    return pooled


def _value(value: float | None, spec: str = ".4f") -> str:
    return "  n/a " if value is None else format(value, spec)


def headline(pooled: dict, summary_file: Path) -> str:
    """The pooled per-patient Dice of every option: mean [95% CI], median [95% CI], each fold's mean."""
    lines = [
        f"Out-of-fold per-patient Dice, {pooled['folds']}-fold cross-validation over {pooled['n_patients']} "
        f"patients ({summary_file}):",
        f"{'option':<14} {'mean':>7} {'95% CI':>17} {'median':>7} {'95% CI':>17}  fold means",
    ]
    for variant, figures in pooled["aggregates"].items():
        dice = figures["dice"]
        ci = [dice.get("mean_ci95"), dice.get("median_ci95")]
        text = ["[" + ", ".join(_value(v) for v in c) + "]" if c else "n/a" for c in ci]
        folds = " ".join(_value(f["mean"], ".3f") for f in figures["fold_dice"])
        mean, median = _value(dice["mean"]), _value(dice["median"])
        lines.append(f"{variant:<14} {mean} {text[0]:>17} {median} {text[1]:>17}  {folds}")
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    try:
        pairs = parse_overrides(args.overrides)
        if args.folds is not None:
            pairs = [(k, v) for k, v in pairs if k != "folds"] + [("folds", args.folds)]
        plan = CrossvalPlan(config_files(args.config_file), pairs)
        chosen = selected_folds(args.fold, plan.folds)
        resume = truthy(args.resume)
        check_folds(plan, chosen, resume)
        logger.info("Cross-validation %s: folds %s of %d", plan.name, ", ".join(map(str, chosen)), plan.folds)
        for i in chosen:
            run_fold(plan, i)
        pool(plan, args.bootstrap_samples)
    except (ValueError, RuntimeError, OSError) as error:  # DatasetError is a ValueError
        logger.error("%s", error)
        return 1
    except KeyboardInterrupt:
        logger.error("Cross-validation interrupted: rerun the same command with --resume true to continue it")
        return 130
    return 0
