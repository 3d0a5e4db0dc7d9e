"""Log an evaluation to MLflow: into the run that produced the checkpoint when it is known.

A training run writes ``<run_dir>/mlflow_run.json``; a checkpoint at ``<run_dir>/models/*.pt``
is therefore traced back to its run. Otherwise a new run ``eval-<timestamp>`` is created in the
experiment. The evaluated data is logged as the run's dataset input with context "evaluation".
Failures warn and never lose the files already written.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from pipeline.tracking.run_inputs import dataset_inputs
from pipeline.tracking.uris import artifact_location

logger = logging.getLogger(__name__)


def training_run_of(checkpoint: str | Path) -> dict | None:
    """``{"run_id", "tracking_uri", "experiment"}`` of the run that wrote ``checkpoint``, or None."""
    run_file = Path(checkpoint).resolve().parent.parent / "mlflow_run.json"
    if not run_file.is_file():
        return None
    try:
        return json.loads(run_file.read_text())
    except (OSError, ValueError):
        return None


STATISTICS = ("mean", "median", "max", "total")


def summary_metrics(summary: dict) -> dict[str, float]:
    """The MLflow metrics of a summary.json: ``eval_<option>_<figure>[_<statistic>]``.

    A figure given as statistics (``{"mean": ..., "median": ...}``) gives one metric per statistic in
    ``STATISTICS`` that it holds (e.g. ``eval_threshold_dice_mean``,
    ``eval_threshold_fp_voxels_lesion_free_max``); a figure given as a number gives one metric
    (``eval_threshold_sensitivity``). Undefined values (None) and counts are not logged.
    """
    out = {}
    for variant, aggregates in summary["aggregates"].items():
        name = variant.replace("+", "_")
        for figure, stats in aggregates.items():
            if isinstance(stats, dict):
                for stat in STATISTICS:
                    if stats.get(stat) is not None:
                        out[f"eval_{name}_{figure}_{stat}"] = float(stats[stat])
            elif isinstance(stats, int | float) and not isinstance(stats, bool):
                out[f"eval_{name}_{figure}"] = float(stats)
    return out


class EvaluationTracking:
    """Log evaluation metrics, files and learning curves to MLflow.

    Args:
        checkpoint: the evaluated checkpoint; its training run is used when known.
        tracking_uri: used for a new run (and when the training run does not say). Default None.
        experiment_name: experiment of a new run. Default "lgg-segmentation".
        learning_curves: draw the training run's learning curves from MLflow. Default True.
        dataset: the evaluated data, ``{name, digest, source, ...}`` as for
            :func:`pipeline.tracking.run_inputs.dataset_inputs`, logged with context "evaluation".
            Its name must differ from the training run's datasets (MLflow keeps one context per
            name and digest in a run). Default None: no dataset input.
    """

    def __init__(
        self,
        checkpoint: str,
        tracking_uri: str | None = None,
        experiment_name: str = "lgg-segmentation",
        learning_curves: bool = True,
        dataset: dict[str, Any] | None = None,
    ) -> None:
        self.checkpoint = checkpoint
        self.training_run = training_run_of(checkpoint)
        self.tracking_uri = (
            os.environ.get("MLFLOW_TRACKING_URI")
            or (self.training_run or {}).get("tracking_uri")
            or tracking_uri
        )
        self.experiment_name = experiment_name
        self.learning_curves = learning_curves
        self.dataset = dict(dataset) if dataset else None
        self.run_id: str | None = None

    def log_evaluation(self, summary: dict, files: dict[str, Path]) -> None:
        try:
            self._log(summary, files)
        except Exception as error:  # MLflow trouble must not lose the evaluation files
            logger.warning(
                "MLflow logging of the evaluation failed (%s: %s); the results are in %s",
                type(error).__name__,
                str(error).splitlines()[0][:300] if str(error) else "",
                Path(files["summary"]).parent,
            )

    def _log(self, summary: dict, files: dict[str, Path]) -> None:
        import mlflow
        from mlflow.entities import Metric

        client = mlflow.MlflowClient(tracking_uri=self.tracking_uri)
        if self.training_run is not None:
            self.run_id = self.training_run["run_id"]
        else:
            experiment = client.get_experiment_by_name(self.experiment_name)
            experiment_id = (
                experiment.experiment_id
                if experiment
                else client.create_experiment(self.experiment_name, artifact_location(self.tracking_uri))
            )
            run = client.create_run(experiment_id, run_name=f"eval-{time.strftime('%Y%m%d-%H%M%S')}")
            self.run_id = run.info.run_id
            client.set_tag(self.run_id, "checkpoint", str(self.checkpoint))
        stamp = int(time.time() * 1000)
        values = [Metric(key, value, stamp, 0) for key, value in summary_metrics(summary).items()]
        client.log_batch(self.run_id, metrics=values)
        if self.dataset is not None:
            run = client.get_run(self.run_id)
            known = run.inputs.dataset_inputs if run.inputs else []
            inputs = dataset_inputs({"evaluation": self.dataset}, known)
            if inputs:
                client.log_inputs(self.run_id, inputs)
        if self.learning_curves and self.training_run is not None:
            files = dict(files)
            files["learning_curves"] = self._learning_curves(client, Path(files["summary"]).parent)
        for path in files.values():
            client.log_artifact(self.run_id, str(path), "evaluation")
        if self.training_run is None:
            client.set_terminated(self.run_id)
        logger.info("Evaluation logged to MLflow run %s at %s", self.run_id, self.tracking_uri)

    def _learning_curves(self, client: Any, out_dir: Path) -> Path:
        from pipeline.tracking import curves

        histories = curves.mlflow_histories(
            client, [self.run_id], ("train_loss", "val_dice", "val_volume_dice")
        )
        return curves.learning_curves(histories, out_dir / "learning_curves.png")
