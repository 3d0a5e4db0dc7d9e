"""A cross-validation fold as a training run: its name, its checks and its nested MLflow run.

``bundle/configs/crossval.json`` (over train.json) makes fold ``i`` of a K-fold cross-validation a
normal training run: its data come from :func:`pipeline.data.fold_data.prepare_fold_data`, its
run is named ``<crossval_name>-fold<i>`` (:func:`fold_run_name`, so ``--fold i --resume true``
finds it after a kill), and its MLflow run is a child of the cross-validation's parent run
(:class:`FoldTracking`): the parent, named ``<crossval_name>`` and tagged ``crossval``
(the name) and ``crossval_role`` ``parent``, is found, or created by the first fold that starts;
each fold run gets the ``mlflow.parentRunId`` tag MLflow nests runs by, and the tags
``crossval``, ``crossval_role`` ``fold``, ``fold`` and ``folds``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

from ignite.engine import Engine

from pipeline.data.folds import check_folds_setting
from pipeline.tracking.guard import creation_lock
from pipeline.tracking.training_run import MLflowTracking

logger = logging.getLogger(__name__)

PARENT_TAG = "mlflow.parentRunId"


def crossval_name(folds: Any, dataset_dir: str, prefix: str = "unet", **settings: object) -> str:
    """The default ``--crossval_name``: ``cv<K>-<dataset folder>-<prefix>-<k><v>...``, no timestamp,
    so that every fold and every later command (resume, pooling) finds the same runs.

    Example: ``crossval_name(5, "outputs/phantom_demo", f=3, s=128, e=10)`` ->
    ``cv5-phantom_demo-unet-f3-s128-e10``.
    """
    folder = os.path.basename(os.path.normpath(str(dataset_dir)))
    parts = [f"cv{folds}", folder, prefix] + [f"{key}{value}" for key, value in settings.items()]
    return "-".join(parts)


def fold_run_name(name: str, fold: Any, folds: Any) -> str:
    """Fold ``fold``'s run name, ``<name>-fold<fold>``; a missing or bad ``--fold`` is refused."""
    _, i = check_folds_setting(folds, fold)
    return f"{name}-fold{i}"


def check_fold_run(run_name: str, name: str, fold: Any, folds: Any, data: Any = None) -> None:
    """Refuse a ``--run_name`` other than the fold's own name (the cross-validation would not find it).

    ``data`` is only referenced so that crossval.json's ``initialize`` prepares the fold's data (and
    refuses a leaking fold file) before the run folder is created.
    """
    expected = fold_run_name(name, fold, folds)
    if run_name != expected:
        raise ValueError(
            f"--run_name {run_name}: with crossval.json fold {fold}'s run is named {expected} "
            f"(<crossval_name>-fold<i>), so that the cross-validation finds it; drop --run_name, and pass "
            f"--crossval_name NAME to name the cross-validation"
        )


def parent_tags(crossval: Mapping[str, Any]) -> dict[str, str]:
    return {
        "crossval": str(crossval["name"]),
        "crossval_role": "parent",
        "folds": str(crossval["folds"]),
        "fold_file": str(crossval.get("fold_file", "")),
    }


def find_parent(client: Any, experiment_id: str, name: str) -> Any:
    """The cross-validation's parent run (the oldest when a race made two), or None."""
    query = f"tags.crossval = '{name}' and tags.crossval_role = 'parent'"
    runs = client.search_runs([experiment_id], filter_string=query, max_results=100)
    return min(runs, key=lambda r: (r.info.start_time, r.info.run_id)) if runs else None


def find_or_create_parent(client: Any, experiment_id: str, crossval: Mapping[str, Any]) -> str:
    """The parent run id of the cross-validation ``crossval["name"]``, created when missing.

    Folds starting at once on one machine with a SQLite store take turns (the file lock MLflow
    clients are built under). Elsewhere (folds on several machines, one tracking server) two may
    each create one: each then looks again, keeps the oldest and deletes its own if it is not that
    one, so the folds agree on their parent (but for creations within the same millisecond window).
    """
    name = str(crossval["name"])
    with creation_lock(getattr(client, "tracking_uri", None)):
        found = find_parent(client, experiment_id, name)
        if found is not None:
            return found.info.run_id
        created = client.create_run(experiment_id, run_name=name, tags=parent_tags(crossval))
    oldest = find_parent(client, experiment_id, name)
    if oldest is not None and oldest.info.run_id != created.info.run_id:
        client.delete_run(created.info.run_id)
        return oldest.info.run_id
    logger.info("MLflow: created the cross-validation's parent run %s (%s)", name, created.info.run_id)
    return created.info.run_id


class FoldTracking(MLflowTracking):
    """:class:`pipeline.tracking.training_run.MLflowTracking` of a fold run: nested in the parent.

    Args:
        crossval: ``{"name", "folds", "fold", "fold_file"}`` of the cross-validation.
        Others: as for MLflowTracking. The fold file is logged with the artifacts.

    Finding or creating the parent is guarded like every MLflow call: when it fails, the fold run is
    logged without the parent tag and training goes on.
    """

    def __init__(self, crossval: Mapping[str, Any], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.crossval = dict(crossval)
        folds, fold = check_folds_setting(self.crossval["folds"], self.crossval["fold"])
        self.tags.update(
            {
                "crossval": str(self.crossval["name"]),
                "crossval_role": "fold",
                "fold": str(fold),
                "folds": str(folds),
            }
        )
        if self.crossval.get("fold_file"):
            self.artifacts = (*self.artifacts, str(self.crossval["fold_file"]))

    def start(self, engine: Engine) -> None:
        if self.enabled and self.run_id is None and self.client is not None:
            self._started = True
            self._call("run", self._set_experiment)
            if self.experiment is not None:
                experiment = self.experiment.experiment_id
                parent = self._call(
                    "parent run", find_or_create_parent, self.client, experiment, self.crossval
                )
                if parent is not None:
                    self.tags[PARENT_TAG] = parent
        super().start(engine)
