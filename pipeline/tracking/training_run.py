"""MLflow tracking of training runs that never costs the training.

``MLflowTracking`` is one handler object shared by the trainer and the evaluator of a run (the
config references it from both handler lists), so both log into the same MLflow run:

- trainer: the recipe's parameters and tags (git commit, dataset fingerprint) at start,
  per-iteration loss and learning rate (buffered, written in batches of ``flush_every``),
  per-epoch training metrics, and at completion the artifacts (merged config, split, best model);
- evaluator: its metrics at every validation, at the trainer's epoch.

MLflow trouble never stops training; what was not logged is counted and reported at the end.
How (retries, a lock around database creation, a circuit breaker): :mod:`pipeline.tracking.guard`.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine, Events

from pipeline.atomic import write_json
from pipeline.tracking.guard import MLflowGuard, _open_client
from pipeline.tracking.monai_switch import refuse_second_tracker
from pipeline.tracking.provenance import active_bundle_config, flatten, git_commit

logger = logging.getLogger(__name__)


def shared_handler(handler: Any) -> Any:
    """Return ``handler`` itself: lets ``train#handlers`` list an object defined elsewhere as a dict.

    MONAI's ``check_properties`` expects every entry of ``train#handlers`` to be a dict with a
    ``_target_``; a bare ``"@mlflow_tracking"`` reference would break it.
    """
    return handler


class MLflowTracking(MLflowGuard):
    """Log a MONAI training workflow to MLflow without ever stopping it.

    Args:
        tracking_uri: MLflow tracking URI, e.g. ``sqlite:///outputs/mlflow.db`` or
            ``http://127.0.0.1:5000``. ``MLFLOW_TRACKING_URI`` in the environment overrides it.
        experiment_name: MLflow experiment, created when missing. Default "lgg-segmentation".
        run_name: readable run name. Default None lets MLflow choose.
        params: recipe parameters to log at start (values stringified, nested dicts flattened).
        tags: extra run tags. The git commit is added as ``git_commit`` when there is one.
        artifacts: files logged when training completes; missing ones are skipped.
        run_dir: the run's output folder; the run id is written to ``<run_dir>/mlflow_run.json``
            and the merged bundle config to ``<run_dir>/config.json``. Default None.
        flush_every: iterations between batched writes of per-iteration metrics. Default 50.
        retries: attempts for a locked SQLite database. Default 8 (a few minutes at worst).
        unavailable_pause: seconds without calls to an unavailable store (:mod:`pipeline.tracking.guard`).
            Default 300.
        enabled: False turns the handler into a no-op (e.g. on ranks other than 0). Default True.
    """

    def __init__(
        self,
        tracking_uri: str | None = None,
        experiment_name: str = "lgg-segmentation",
        run_name: str | None = None,
        params: Mapping[str, Any] | None = None,
        tags: Mapping[str, str] | None = None,
        artifacts: Sequence[str] = (),
        run_dir: str | None = None,
        flush_every: int = 50,
        retries: int = 8,
        unavailable_pause: float = 300.0,
        enabled: bool = True,
    ) -> None:
        if flush_every < 1:
            raise ValueError(f"flush_every must be >= 1, not {flush_every}")
        self.tracking_uri = os.environ.get("MLFLOW_TRACKING_URI") or tracking_uri
        self.experiment_name = experiment_name
        self.run_name = run_name
        self.params = dict(params or {})
        self.tags = dict(tags or {})
        self.artifacts = [str(a) for a in artifacts if a]
        self.run_dir = Path(run_dir) if run_dir else None
        self.flush_every = flush_every
        self.retries = max(1, retries)
        self.unavailable_pause = unavailable_pause
        self.enabled = enabled
        self.run_id: str | None = None
        self.failures: dict[str, int] = {}  # what was not logged -> how many values
        self.first_error: str | None = None
        self._paused_until = 0.0
        self._started = False  # start() ran: from then on what cannot be logged is counted
        self._ok = True  # the last _call succeeded
        self._buffer: list[Any] = []
        self._client = None
        self._config = active_bundle_config() if enabled else None

    # -- plumbing -------------------------------------------------------------------------------
    def _metrics(self, values: Mapping[str, Any], step: int) -> list[Any]:
        from mlflow.entities import Metric

        stamp = int(time.time() * 1000)
        out = []
        for key, value in values.items():
            if isinstance(value, torch.Tensor):
                if value.numel() != 1:
                    continue
                value = value.item()
            if isinstance(value, (int, float)):
                out.append(Metric(key, float(value), stamp, int(step)))
        return out

    def _log(self, what: str, metrics: list[Any] = (), params: list[Any] = (), tags: list[Any] = ()) -> None:
        if not self.enabled or not (metrics or params or tags):
            return
        if self.run_id is None:  # no run (MLflow failed at start): count what it would have held
            self._not_logged(what, len(metrics) + len(params) + len(tags))
            return
        for start in range(0, max(len(metrics), 1), 1000):  # MLflow's batch limit is 1000 metrics
            chunk = list(metrics[start : start + 1000])
            first = start == 0
            self._call(
                what,
                self._client.log_batch,
                self.run_id,
                metrics=chunk,
                params=list(params) if first else [],
                tags=list(tags) if first else [],
                count=len(chunk) + (len(params) + len(tags) if first else 0),
            )

    # -- ignite ---------------------------------------------------------------------------------
    def attach(self, engine: Engine) -> None:
        """Attach to a trainer or to an evaluator; attaching twice is a no-op."""
        from monai.engines import Trainer

        # MONAI attaches handlers before the trainer has its optimizer attribute: test the class
        if isinstance(engine, Trainer):
            handlers = [
                (Events.STARTED, self.start),
                (Events.ITERATION_COMPLETED, self.iteration_completed),
                (Events.EPOCH_COMPLETED, self.epoch_completed),
                (Events.COMPLETED, self.completed),
                (Events.EXCEPTION_RAISED, self.exception_raised),
            ]
        else:
            handlers = [(Events.EPOCH_COMPLETED, self.epoch_completed)]
        for event, handler in handlers:
            if not engine.has_event_handler(handler, event):
                engine.add_event_handler(event, handler)

    def _experiment_id(self) -> str | None:
        experiment = self._call("run", self._client.get_experiment_by_name, self.experiment_name)
        if experiment is None and self._ok:  # missing: create it
            location = None
            if self.tracking_uri and self.tracking_uri.startswith("sqlite:///"):
                db = Path(self.tracking_uri[len("sqlite:///") :].split("?")[0].removeprefix("file:"))
                location = (db.parent / "mlartifacts").resolve().as_uri()
            try:
                self._client.create_experiment(self.experiment_name, location)
            except Exception:  # e.g. created by another run at the same moment: read it back
                pass
            experiment = self._call("run", self._client.get_experiment_by_name, self.experiment_name)
        return experiment.experiment_id if experiment is not None else None

    def start(self, engine: Engine | None = None) -> None:
        """Open (or, when ``<run_dir>/mlflow_run.json`` names one, continue) the MLflow run.

        Raises:
            ValueError: MONAI's own MLFlowHandler is attached too (``--tracking mlflow``).
        """
        if engine is not None:
            refuse_second_tracker(engine)
        if not self.enabled or self.run_id is not None:
            return
        from mlflow.entities import Param, RunTag

        self._started = True
        self._save_config()
        tags = dict(self.tags)
        commit = git_commit(Path(__file__).resolve().parent)
        if commit:
            tags["git_commit"] = commit
        params = {k: str(v)[:6000] for k, v in flatten(self.params).items()}
        self._client = self._call("run", _open_client, self.tracking_uri)
        experiment_id = self._experiment_id() if self._ok else None
        run_id = self._previous_run_id() if experiment_id is not None else None
        if experiment_id is not None and run_id is None:
            run = self._call("run", self._client.create_run, experiment_id, run_name=self.run_name)
            run_id = run.info.run_id if run is not None else None
        elif run_id is not None:
            self._call("run", self._client.update_run, run_id, status="RUNNING")
        if run_id is None:
            if self._ok:  # nothing failed, yet no run (an experiment that cannot be read back)
                self._not_logged("run", 1)
            self._not_logged("params and tags", len(params) + len(tags))
            return
        self.run_id = run_id
        self._save_run_file()
        existing = self._call("params and tags", self._client.get_run, run_id, count=0)
        known = existing.data.params if existing is not None else {}
        self._log(
            "params and tags",
            params=[Param(k, v) for k, v in params.items() if k not in known],
            tags=[RunTag(k, str(v)) for k, v in tags.items()],
        )
        logger.info("MLflow: run %s (%s) at %s", self.run_name, run_id, self.tracking_uri)

    def _previous_run_id(self) -> str | None:
        path = self.run_dir / "mlflow_run.json" if self.run_dir else None
        if path is None or not path.is_file():
            return None
        try:
            return json.loads(path.read_text())["run_id"]
        except (OSError, ValueError, KeyError):
            return None

    def _save_config(self) -> None:
        """The merged config into the run folder, logged as an artifact: with or without MLflow."""
        if self.run_dir is None or self._config is None:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        write_json(self.run_dir / "config.json", self._config)
        if str(self.run_dir / "config.json") not in self.artifacts:
            self.artifacts.append(str(self.run_dir / "config.json"))

    def _save_run_file(self) -> None:
        if self.run_dir is None:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        record = {
            "run_id": self.run_id,
            "tracking_uri": self.tracking_uri,
            "experiment": self.experiment_name,
        }
        write_json(self.run_dir / "mlflow_run.json", record)

    def iteration_completed(self, engine: Engine) -> None:
        output = engine.state.output
        loss = output[0]["loss"] if isinstance(output, list) else output["loss"]
        values = {"train_loss_iter": float(loss.detach()) if isinstance(loss, torch.Tensor) else float(loss)}
        for i, group in enumerate(engine.optimizer.param_groups):
            values[f"lr_group_{i}" if i else "lr"] = float(group["lr"])
        self._buffer.extend(self._metrics(values, engine.state.iteration))
        if engine.state.iteration % self.flush_every == 0:
            self.flush()

    def flush(self) -> None:
        buffered, self._buffer = self._buffer, []
        self._log("iteration metric values", metrics=buffered)

    def epoch_completed(self, engine: Engine) -> None:
        if hasattr(engine, "optimizer"):  # the trainer (attached handlers run after __init__)
            self.flush()
        metrics = dict(engine.state.metrics)
        best = getattr(engine.state, "best_metric", None)
        if best is not None and best > -1:
            metrics["best_" + (getattr(engine.state, "key_metric_name", None) or "metric")] = best
        self._log("epoch metric values", metrics=self._metrics(metrics, engine.state.epoch))

    def completed(self, engine: Engine | None = None) -> None:
        """Flush and log the artifacts (merged config, split file, best model)."""
        self.flush()
        files = [path for path in self.artifacts if Path(path).is_file()]
        if self.run_id is None:
            self._not_logged("artifacts", len(files))
            return
        for path in files:
            subdir = "models" if path.endswith((".pt", ".ts", ".onnx")) else None
            self._call("artifacts", self._client.log_artifact, self.run_id, path, subdir)

    def exception_raised(self, engine: Engine, error: BaseException) -> None:
        self.flush()
        self.close(status="KILLED" if isinstance(error, KeyboardInterrupt) else "FAILED")
        raise error

    def close(self, status: str = "FINISHED") -> None:
        """End the MLflow run and report anything that could not be logged."""
        if self.run_id is not None:
            self.flush()
            self._call("final run status", self._client.set_terminated, self.run_id, status)
        if self.failures:
            logger.warning(
                "MLflow: not logged to %s (%s): %s. The checkpoints and %s hold the results.",
                self.tracking_uri,
                self.first_error,
                ", ".join(f"{v} {k}" for k, v in self.failures.items()),
                self.run_dir or "the run folder",
            )
