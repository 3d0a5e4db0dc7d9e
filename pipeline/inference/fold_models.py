"""Which models a fold ensemble averages: the fold runs of a cross-validation, found from a folder.

``python -m pipeline crossval`` (:mod:`pipeline.evaluation.crossval`) trains fold ``i`` of the
cross-validation ``<name>`` in ``<output_root>/runs/<name>-fold<i>`` and pools the folds into
``<output_root>/crossval/<name>/summary.json``. The ensemble is named by either folder:

- the cross-validation folder ``<output_root>/crossval/<name>`` (it need not exist yet: it is
  written when the folds are pooled), or
- any fold's run folder ``<output_root>/runs/<name>-fold<i>``.

The number of folds is the pooled summary's ``folds``, else the ``folds`` recorded in a fold run's
``config.json``. Every fold must have finished training: ``models/model.pt`` (the best model of
its run) and ``models/final.pt`` (written when its last epoch ended); a missing or unfinished fold
is refused, naming it and the command that trains or resumes it, since an ensemble silently short
of a fold, or holding a half-trained one, is another model than the user asked for. To average
other checkpoints (unfinished folds, runs of different recipes), pass them as a list.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

FOLD_RUN = re.compile(r"(?P<name>.+)-fold(?P<fold>\d+)")
POOLED = "summary.json"


@dataclass(frozen=True)
class CrossvalFolds:
    """The fold models of one cross-validation.

    Attributes:
        name: the cross-validation's name (``--crossval_name``).
        output_root: the folder holding ``runs/`` and ``crossval/``.
        checkpoints: fold ``i``'s ``models/model.pt`` at index ``i``.
    """

    name: str
    output_root: Path
    checkpoints: tuple[Path, ...]

    @property
    def folder(self) -> Path:
        """``<output_root>/crossval/<name>``, where the pooled out-of-fold results are."""
        return self.output_root / "crossval" / self.name

    def run_dir(self, fold: int) -> Path:
        return self.output_root / "runs" / f"{self.name}-fold{fold}"


def _where(crossval: str | Path) -> tuple[str, Path]:
    """(name, output_root) of a cross-validation folder or a fold run folder.

    Raises:
        ValueError: ``crossval`` is neither.
    """
    path = Path(crossval).expanduser().resolve()
    if path.parent.name == "crossval":
        return path.name, path.parent.parent
    match = FOLD_RUN.fullmatch(path.name)
    if path.parent.name == "runs" and match:
        return match["name"], path.parent.parent
    raise ValueError(
        f"crossval {crossval} is neither a cross-validation folder (<output_root>/crossval/<name>, "
        "written by python -m pipeline crossval) nor a fold run folder (<output_root>/runs/<name>-fold<i>); "
        "pass one of them, e.g. --crossval outputs/crossval/cv5-phantom_demo-unet-f3-s128-e10"
    )


def _recorded_folds(config_file: Path) -> int | None:
    try:
        value = json.loads(config_file.read_text()).get("folds")
        return int(value) if not isinstance(value, bool) else None
    except (OSError, ValueError, TypeError, AttributeError):
        return None


def fold_count(name: str, output_root: Path) -> int:
    """The number of folds of the cross-validation ``name`` (see the module docstring).

    Raises:
        FileNotFoundError: neither a pooled summary nor a fold run records it.
    """
    pooled = output_root / "crossval" / name / POOLED
    if pooled.is_file():
        try:
            return int(json.loads(pooled.read_text())["folds"])
        except (OSError, ValueError, KeyError, TypeError):
            pass
    for run in sorted((output_root / "runs").glob(f"{name}-fold*")):
        match = FOLD_RUN.fullmatch(run.name)
        folds = _recorded_folds(run / "config.json") if match and match["name"] == name else None
        if folds is not None:
            return folds
    raise FileNotFoundError(
        f"no fold run of the cross-validation {name} under {output_root / 'runs'} (runs named "
        f"{name}-fold<i> with a config.json): train it first with python -m pipeline crossval "
        f"--crossval_name {name} (and the cross-validation's settings)"
    )


def crossval_folds(crossval: str | Path) -> CrossvalFolds:
    """The fold models of the cross-validation that ``crossval`` names (module docstring).

    Raises:
        ValueError: ``crossval`` is not such a folder.
        FileNotFoundError: the folds are unknown, or a fold has no model or has not finished
            training (the message names the fold and the command that trains it).
    """
    name, root = _where(crossval)
    folds = fold_count(name, root)
    found = CrossvalFolds(
        name, root, tuple(root / "runs" / f"{name}-fold{i}" / "models" / "model.pt" for i in range(folds))
    )
    for i, checkpoint in enumerate(found.checkpoints):
        command = f"python -m pipeline crossval --fold {i} --crossval_name {name}"
        if not checkpoint.is_file():
            raise FileNotFoundError(
                f"fold {i} of the {folds}-fold cross-validation {name} has no trained model ({checkpoint}): "
                f"train it with {command} (and the cross-validation's other settings: --config_file, "
                "--folds, ...)"
            )
        if not (checkpoint.parent / "final.pt").is_file():
            raise FileNotFoundError(
                f"fold {i} of the cross-validation {name} has not finished training (no "
                f"{checkpoint.parent / 'final.pt'}): resume it with {command} --resume true, or pass the "
                "checkpoints to average as a list"
            )
    return found


def fold_checkpoints(crossval: str | Path | Sequence[str | Path]) -> list[Path]:
    """The checkpoints an ensemble averages: those of :func:`crossval_folds`, or ``crossval`` itself
    when it is a list of checkpoints.

    Raises:
        ValueError: an empty list, or a folder that names no cross-validation.
        FileNotFoundError: a checkpoint of the list is missing, or see :func:`crossval_folds`.
    """
    if isinstance(crossval, str | Path):
        return list(crossval_folds(crossval).checkpoints)
    checkpoints = [Path(c).expanduser() for c in crossval]
    if not checkpoints:
        raise ValueError(
            "crossval is an empty list: pass a cross-validation folder or the checkpoints to average"
        )
    for checkpoint in checkpoints:
        if not checkpoint.is_file():
            raise FileNotFoundError(
                f"ensemble member {checkpoint} does not exist; pass existing model.pt files"
            )
    return checkpoints


def crossval_folder(crossval: str | Path) -> str:
    """The name of the ensemble in the outputs (inference.json's ``ckpt_path`` when ``crossval`` is
    set): the cross-validation folder ``<output_root>/crossval/<name>``.

    Raises:
        ValueError: ``crossval`` is not a cross-validation or fold run folder (a list of checkpoints
            is for :func:`pipeline.inference.ensemble.fold_ensemble` in Python, not for the configs).
    """
    if not isinstance(crossval, str | Path):
        raise ValueError(
            f"crossval {crossval!r}: the configs take a cross-validation folder (--crossval "
            "outputs/crossval/<name>); to average other checkpoints use "
            "pipeline.inference.ensemble.fold_ensemble([...]) in Python"
        )
    name, root = _where(crossval)
    return str(root / "crossval" / name)
