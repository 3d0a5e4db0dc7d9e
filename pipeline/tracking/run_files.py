"""What a training run keeps in its run folder about its MLflow run.

- ``mlflow_run.json``: the run id, tracking URI and experiment, so that ``--resume true`` logs
  into the same MLflow run and ``evaluate``/``export`` find it;
- ``config.json``: the merged bundle config, kept with or without MLflow.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from pipeline.atomic import write_json

logger = logging.getLogger(__name__)

RUN_RECORD = "mlflow_run.json"
CONFIG = "config.json"


def recorded_run_id(run_dir: str | Path | None) -> str | None:
    """The MLflow run id in ``<run_dir>/mlflow_run.json``, or None (no folder, no file, unreadable)."""
    path = Path(run_dir) / RUN_RECORD if run_dir else None
    if path is None or not path.is_file():
        return None
    try:
        return json.loads(path.read_text())["run_id"]
    except (OSError, ValueError, KeyError):
        return None


def write_run_record(run_dir: str | Path, run_id: str, tracking_uri: str | None, experiment: str) -> Path:
    """Write ``<run_dir>/mlflow_run.json`` (atomically); its path."""
    record = {"run_id": run_id, "tracking_uri": tracking_uri, "experiment": experiment}
    return write_json(_folder(run_dir) / RUN_RECORD, record)


def write_config(run_dir: str | Path, config: dict | None) -> Path | None:
    """Write the merged config to ``<run_dir>/config.json`` (atomically); its path.

    None, with a warning saying how to record it, when there is no config: a workflow built in
    Python has no command line to rebuild it from (:mod:`pipeline.tracking.provenance`).
    """
    if config is None:
        logger.warning(
            "%s/%s is not written: a workflow built in Python has no command line to record; call "
            "pipeline.tracking.provenance.record_workflow_config(workflow) before workflow.run()",
            run_dir,
            CONFIG,
        )
        return None
    return write_json(_folder(run_dir) / CONFIG, config)


def _folder(run_dir: str | Path) -> Path:
    folder = Path(run_dir)
    folder.mkdir(parents=True, exist_ok=True)
    return folder
