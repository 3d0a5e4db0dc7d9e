"""What ``python -m pipeline crossval`` runs: the fold commands, where each fold stands, its settings.

A :class:`CrossvalPlan` is built from the bundle command line (config files and ``--key value``
overrides): fold ``i`` is ``python -m monai.bundle run training`` of those files plus
``bundle/configs/crossval.json`` with ``--fold i``, and its out-of-fold evaluation is
``python -m monai.bundle run`` of train.json (and the user's overlays) plus evaluate.json on the
fold run's ``model.pt``, with the mask-saving report (:mod:`pipeline.evaluation.pooled_masks`).
The names and paths (cross-validation name, fold file, run folders) are resolved from the merged
config exactly as the fold runs resolve them.
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from pipeline.tracking.provenance import command_line_config, flatten

CONFIGS = Path(__file__).resolve().parents[2] / "bundle" / "configs"
CROSSVAL_CONFIG = CONFIGS / "crossval.json"
EVALUATE_CONFIG = CONFIGS / "evaluate.json"
TRAIN_CONFIG = CONFIGS / "train.json"
REPORT = "pipeline.evaluation.pooled_masks.OutOfFoldReport"
# overrides the driver sets per fold, or that would break a cross-validation
REFUSED = {
    "run_name": "each fold's run is named <crossval_name>-fold<i>; pass --crossval_name NAME instead",
    "split_file": "each fold's split file is derived from the fold file; edit the fold file to choose folds",
    "n_val": "a fold's validation patients are the fold; change --folds instead",
    "ckpt_path": "each fold is evaluated with its own model.pt",
}
# settings that may differ between the commands of one cross-validation
FREE = {"fold", "resume", "show_progress", "num_workers", "cache_workers"}


def parse_overrides(words: list[str]) -> list[tuple[str, str]]:
    """``--key value`` (or ``--key=value``) pairs of a bundle command line, values as typed.

    Raises:
        ValueError: a word that is not part of a pair, naming it.
    """
    pairs, i = [], 0
    while i < len(words):
        word = words[i]
        if not word.startswith("--") or len(word) == 2:
            raise ValueError(
                f"python -m pipeline crossval: {word!r} is not a --key value pair; bundle settings are given "
                "as --key value, e.g. --epochs 10 --dataset_dir /data/kaggle_3m"
            )
        if "=" in word:
            key, value = word[2:].split("=", 1)
            i += 1
        elif i + 1 < len(words):
            key, value = word[2:], words[i + 1]
            i += 2
        else:
            raise ValueError(f"python -m pipeline crossval: {word} has no value; pass {word} VALUE")
        if key in REFUSED:
            raise ValueError(f"python -m pipeline crossval: --{key} does not apply: {REFUSED[key]}")
        pairs.append((key, value))
    return pairs


def config_files(config_file: str | None) -> list[str]:
    """The ``--config_file`` list (a path or a Python list of paths; default train.json), with
    crossval.json appended unless it is there."""
    if config_file is None:
        files = [str(TRAIN_CONFIG)]
    else:
        parsed = ast.literal_eval(config_file) if config_file.strip().startswith("[") else config_file
        files = [parsed] if isinstance(parsed, str) else [str(f) for f in parsed]
    if not any(Path(f).resolve() == CROSSVAL_CONFIG for f in files):
        files.append(str(CROSSVAL_CONFIG))
    return files


def _file_list(files: list[str]) -> str:
    return "[" + ",".join(repr(f) for f in files) + "]"


def _flat(pairs: list[tuple[str, str]]) -> list[str]:
    return [word for key, value in pairs for word in (f"--{key}", value)]


class CrossvalPlan:
    """The fold commands and paths of one cross-validation (module docstring).

    Args:
        files: the config files, crossval.json among them (:func:`config_files`).
        pairs: the ``--key value`` overrides (:func:`parse_overrides`), without ``fold`` and ``resume``.
    """

    def __init__(self, files: list[str], pairs: list[tuple[str, str]]) -> None:
        from monai.bundle import ConfigParser

        self.files = files
        self.pairs = [(k, v) for k, v in pairs if k not in ("fold", "resume")]
        parser = ConfigParser(self.merged(0))
        self.folds = parser.get_parsed_content("folds")
        from pipeline.data.folds import check_folds_setting

        check_folds_setting(self.folds)
        self.name = str(parser.get_parsed_content("crossval_name"))
        self.output_root = Path(parser.get_parsed_content("output_root"))
        self.fold_file = Path(parser.get_parsed_content("fold_file"))
        self.dataset_dir = str(parser.get_parsed_content("dataset_dir"))
        self.epochs = parser.get_parsed_content("epochs")
        self.out_dir = self.output_root / "crossval" / self.name

    def train_command(self, fold: int, resume: bool) -> list[str]:
        extra = [("fold", str(fold)), ("resume", "true" if resume else "false")]
        head = [
            sys.executable,
            "-m",
            "monai.bundle",
            "run",
            "training",
            "--config_file",
            _file_list(self.files),
        ]
        return head + _flat(self.pairs + extra)

    def evaluate_command(self, fold: int) -> list[str]:
        files = [f for f in self.files if Path(f).resolve() != CROSSVAL_CONFIG] + [str(EVALUATE_CONFIG)]
        pairs = [(k, v) for k, v in self.pairs if k not in ("folds", "crossval_name")]
        pairs += [("ckpt_path", str(self.model(fold))), ("evaluation_report#_target_", REPORT)]
        return [
            sys.executable,
            "-m",
            "monai.bundle",
            "run",
            "--config_file",
            _file_list(files),
            *_flat(pairs),
        ]

    def merged(self, fold: int) -> dict:
        """The raw merged config of fold ``fold``'s training command (as its config.json records it)."""
        return command_line_config(self.train_command(fold, False)[3:])

    def run_dir(self, fold: int) -> Path:
        return self.output_root / "runs" / f"{self.name}-fold{fold}"

    def model(self, fold: int) -> Path:
        return self.run_dir(fold) / "models" / "model.pt"

    def eval_dir(self, fold: int) -> Path:
        return self.run_dir(fold) / "evaluation"

    def split_file(self, fold: int) -> Path:
        return self.fold_file.with_suffix("") / f"fold{fold}.json"

    def state(self, fold: int) -> str:
        """ "new" (no run folder), "trained", "interrupted" (epoch checkpoints, unfinished) or "empty"
        (a run folder without any checkpoint: killed before its first epoch ended)."""
        models = self.run_dir(fold) / "models"
        if not self.run_dir(fold).exists():
            return "new"
        last, final = models / f"checkpoint_epoch={self.epochs}.pt", models / "final.pt"
        if last.is_file() and final.is_file() and final.stat().st_mtime >= last.stat().st_mtime:
            return "trained"
        return "interrupted" if any(models.glob("checkpoint_epoch=*.pt")) else "empty"

    def set_aside(self, fold: int) -> Path:
        """Move an empty run folder (no checkpoint) to ``<run>.aborted-<time>``: the fold starts anew."""
        run = self.run_dir(fold)
        target = run.with_name(f"{run.name}.aborted-{time.strftime('%Y%m%d-%H%M%S')}")
        shutil.move(str(run), str(target))
        return target

    def settings_differ(self, fold: int) -> list[str]:
        """The settings (flattened keys) in which fold ``fold``'s run config differs from this command."""
        recorded_file = self.run_dir(fold) / "config.json"
        if not recorded_file.is_file():
            return []
        recorded = flatten(json.loads(recorded_file.read_text()))
        current = flatten(self.merged(fold))
        keys = sorted(k for k in set(recorded) | set(current) if k.split("#")[0].split(".")[0] not in FREE)
        return [
            f"{k}: {recorded.get(k)!r} -> {current.get(k)!r}"
            for k in keys
            if recorded.get(k) != current.get(k)
        ]

    def evaluated(self, fold: int) -> bool:
        """Fold ``fold``'s out-of-fold evaluation is there: summary.json of its model.pt, written after
        it, and the mask file of every patient scored."""
        summary_file, model = self.eval_dir(fold) / "summary.json", self.model(fold)
        if not (summary_file.is_file() and model.is_file()):
            return False
        if summary_file.stat().st_mtime < model.stat().st_mtime:
            return False
        try:
            summary = json.loads(summary_file.read_text())
        except (OSError, ValueError):
            return False
        if Path(str(summary.get("checkpoint"))).resolve() != model.resolve():
            return False
        masks = self.eval_dir(fold) / "masks"
        return all((masks / f"{c['patient']}.npz").is_file() for c in summary.get("cases", []))

    def fold_entry(self, fold: int, patients: list[str]) -> dict[str, Any]:
        """What :func:`pipeline.evaluation.pooled.pool_folds` needs of fold ``fold``."""
        summary_file = self.eval_dir(fold) / "summary.json"
        split = json.loads(self.split_file(fold).read_text())
        return {
            "fold": fold,
            "patients": patients,
            "train": split["train"],
            "summary": json.loads(summary_file.read_text()),
            "summary_file": str(summary_file),
            "masks_dir": str(self.eval_dir(fold) / "masks"),
            "run": self.run_dir(fold).name,
        }

    def environment(self) -> dict[str, str]:
        """The subprocesses' environment: this one, with this checkout importable first."""
        root = str(CONFIGS.parents[1])
        path = os.environ.get("PYTHONPATH")
        return dict(os.environ, PYTHONPATH=root if not path else f"{root}{os.pathsep}{path}")
