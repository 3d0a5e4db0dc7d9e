"""What a run consumed and what the machine did: MLflow dataset inputs and system metrics.

- :func:`dataset_inputs`: the datasets of a run as MLflow dataset inputs (``mlflow.log_input``'s
  entities), one per context ("training", "validation", "evaluation"): the name, the dataset
  fingerprint as digest, the folder as source, and the split file and counts of patients and
  slices as profile. The MLflow UI lists them on the run page ("Datasets used"). MLflow keeps
  one context per (name, digest) in a run, so the subsets of one dataset need their own names
  (train.json: ``<folder>-train``, ``<folder>-val``).
- :class:`SystemMetrics`: MLflow's own system-metrics monitor (CPU, memory, disk, network, and GPU
  when ``pynvml`` is installed) logging ``system/...`` metrics every ``interval`` seconds; it needs
  ``psutil``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

logger = logging.getLogger(__name__)

CONTEXT_TAG = "mlflow.data.context"  # mlflow.utils.mlflow_tags.MLFLOW_DATASET_CONTEXT


def dataset_inputs(datasets: Mapping[str, Mapping[str, Any]], known: list[Any] = ()) -> list[Any]:
    """MLflow ``DatasetInput`` entities of ``{context: description}``, less those in ``known``.

    Args:
        datasets: per context, a dict with ``name``, ``digest`` (the dataset fingerprint) and
            ``source`` (its folder); every other item (``split_file``, ``patients``, ``slices``)
            goes into the profile.
        known: the run's dataset inputs already logged (a resumed run): the same name, digest
            and context is not logged twice.

    Raises:
        ValueError: a description lacks ``name`` or ``digest``.
    """
    from mlflow.entities import Dataset, DatasetInput, InputTag

    seen = {
        (item.dataset.name, item.dataset.digest, tag.value)
        for item in known
        for tag in item.tags
        if tag.key == CONTEXT_TAG
    }
    out = []
    for context, description in datasets.items():
        missing = [key for key in ("name", "digest") if not description.get(key)]
        if missing:
            raise ValueError(f"dataset {context!r} needs {' and '.join(missing)}, got {dict(description)}")
        name, digest = str(description["name"]), str(description["digest"])[:36]
        if (name, digest, context) in seen:
            continue
        profile = {k: v for k, v in description.items() if k not in ("name", "digest", "source")}
        dataset = Dataset(
            name=name,
            digest=digest,
            source_type="local",
            source=json.dumps({"uri": str(description.get("source", ""))}),
            profile=json.dumps(profile, default=str, sort_keys=True),
        )
        out.append(DatasetInput(dataset, tags=[InputTag(CONTEXT_TAG, context)]))
    return out


class SystemMetrics:
    """MLflow's ``SystemMetricsMonitor`` on one run, started and stopped without ever raising.

    Args:
        interval: seconds between samples. Default 10 (MLflow's).
    """

    def __init__(self, interval: float = 10.0) -> None:
        if interval <= 0:
            raise ValueError(f"interval must be > 0 seconds, not {interval}")
        self.interval = interval
        self._monitor: Any = None

    def start(self, run_id: str, tracking_uri: str | None, resume: bool = False) -> bool:
        """Start logging ``system/...`` metrics to ``run_id``; False (with a warning) when it cannot."""
        try:
            import psutil  # noqa: F401  (MLflow's monitor needs it)
            from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

            self._monitor = SystemMetricsMonitor(
                run_id, sampling_interval=self.interval, resume_logging=resume, tracking_uri=tracking_uri
            )
            self._monitor.start()
            return True
        except Exception as error:  # missing psutil, an unreachable store: training goes on
            logger.warning("MLflow system metrics are not logged (%s: %s)", type(error).__name__, error)
            self._monitor = None
            return False

    def stop(self) -> None:
        """Stop the monitor (it logs its last samples first)."""
        monitor, self._monitor = self._monitor, None
        if monitor is not None:
            try:
                monitor.finish()
            except Exception as error:
                logger.warning("MLflow system metrics: stopping failed (%s)", error)
