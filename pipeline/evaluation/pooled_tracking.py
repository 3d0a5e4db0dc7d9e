"""Log the pooled out-of-fold results to the cross-validation's parent MLflow run.

The parent is the run every fold run names in its ``mlflow.parentRunId`` tag (the fold runs find
or create it when they start: :mod:`pipeline.training.crossval_fold`); the fold runs are read
from their run folders' ``mlflow_run.json``. The parent gets the pooled metrics under the names
evaluate.json gives a single evaluation (``eval_<option>_<figure>_<statistic>``, ``+`` written
``_``), the bootstrap intervals (``eval_<option>_dice_mean_ci95_low``, ``..._high``, and the same
for the median), each fold's mean Dice (``fold_<option>_dice_mean``, step = fold), the pooled
summary.json, the Dice chart and the fold file as artifacts under ``crossval/``, and status
FINISHED. MLflow trouble warns and never loses the files already written.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path

from pipeline.tracking.evaluation_run import summary_metrics

logger = logging.getLogger(__name__)

PARENT_TAG = "mlflow.parentRunId"


def pooled_metrics(pooled: dict) -> list[tuple[str, float, int]]:
    """``(name, value, step)`` of every metric the parent run gets (module docstring)."""
    out = [(name, value, 0) for name, value in summary_metrics(pooled).items()]
    for variant, figures in pooled["aggregates"].items():
        name = variant.replace("+", "_")
        for stat in ("mean", "median"):
            interval = figures["dice"].get(f"{stat}_ci95")
            if interval is not None:
                out += [(f"eval_{name}_dice_{stat}_ci95_low", interval[0], 0)]
                out += [(f"eval_{name}_dice_{stat}_ci95_high", interval[1], 0)]
        for entry in figures["fold_dice"]:
            if entry["mean"] is not None:
                out.append((f"fold_{name}_dice_mean", entry["mean"], int(entry["fold"])))
    return out


def fold_runs(run_dirs: Sequence[Path]) -> list[dict]:
    """The ``mlflow_run.json`` records of the fold runs that have one."""
    records = []
    for run_dir in run_dirs:
        path = Path(run_dir) / "mlflow_run.json"
        try:
            records.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            logger.warning("%s is missing or unreadable: that fold run is not traced to MLflow", path)
    return records


def log_pooled(pooled: dict, files: dict[str, Path], run_dirs: Sequence[Path], params: dict) -> str | None:
    """Log ``pooled`` to the parent run of the fold runs in ``run_dirs``; its run id, or None."""
    try:
        return _log(pooled, files, run_dirs, params)
    except Exception as error:  # MLflow trouble must not lose the pooled files
        logger.warning(
            "MLflow logging of the pooled cross-validation failed (%s: %s); the results are in %s",
            type(error).__name__,
            str(error).splitlines()[0][:300] if str(error) else "",
            Path(files["summary"]).parent,
        )
        return None


def _log(pooled: dict, files: dict[str, Path], run_dirs: Sequence[Path], params: dict) -> str | None:
    import mlflow
    from mlflow.entities import Metric, Param

    records = fold_runs(run_dirs)
    if not records:
        logger.warning(
            "No fold run was logged to MLflow: the pooled results are only in %s", files["summary"]
        )
        return None
    uri = records[0]["tracking_uri"]
    client = mlflow.MlflowClient(tracking_uri=uri)
    parents = {client.get_run(r["run_id"]).data.tags.get(PARENT_TAG) for r in records}
    parents.discard(None)
    if len(parents) != 1:
        logger.warning(
            "The fold runs name %s parent runs (%s): the pooled results are only in %s",
            "no" if not parents else "different",
            ", ".join(sorted(parents)) or "none",
            files["summary"],
        )
        return None
    parent = parents.pop()
    stamp = int(time.time() * 1000)
    metrics = [Metric(name, float(value), stamp, step) for name, value, step in pooled_metrics(pooled)]
    known = client.get_run(parent).data.params
    new_params = [Param(k, str(v)) for k, v in params.items() if k not in known]
    for start in range(0, max(len(metrics), 1), 1000):  # MLflow's batch limit
        client.log_batch(
            parent, metrics=metrics[start : start + 1000], params=new_params if start == 0 else []
        )
    for path in files.values():
        client.log_artifact(parent, str(path), "crossval")
    client.set_terminated(parent, "FINISHED")
    logger.info("Pooled cross-validation logged to the parent MLflow run %s at %s", parent, uri)
    return parent
