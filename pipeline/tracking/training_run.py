"""MLflow tracking of training runs that never costs the training: MONAI's MLFlowHandler, guarded.

One ``MLflowTracking`` is shared by the trainer and the evaluator (both handler lists reference
it), so both log into one run: the recipe's parameters and tags at start, per-iteration loss and
learning rate, per-epoch metrics of both engines, the artifacts (merged config, split, best model)
and the best model as an MLflow Model (:mod:`pipeline.tracking.logged_model`) at completion.
MONAI's handler does the experiment, ``max_epochs``/``epoch_length``, the event filters, artifact
folders and the SQLite release. Added, because MONAI's lacks them:

- every MLflow call guarded (:mod:`pipeline.tracking.guard`): MONAI's raises, so an outage would
  stop the training; what was not logged is reported at the end;
- the client built under a file lock (MLflow migrates a new SQLite file without one);
- metrics written in batches of ``flush_every`` iterations, not one database write per step;
- a resumed run continues its own MLflow run by id (``<run_dir>/mlflow_run.json``); MONAI's takes
  the newest unfinished run of that name, which may be another process's;
- status KILLED after Ctrl-C and FAILED after an error (MONAI's always says FINISHED);
- the names ``train_loss_iter``, ``lr`` and ``best_<key metric>``; models under ``models/``.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine, Events
from monai.handlers import MLFlowHandler

from pipeline.tracking import run_files
from pipeline.tracking.guard import MLflowGuard, creation_lock
from pipeline.tracking.monai_switch import refuse_second_tracker
from pipeline.tracking.provenance import command_line_config, flatten, git_commit
from pipeline.tracking.run_inputs import SystemMetrics, dataset_inputs
from pipeline.tracking.uris import artifact_location

logger = logging.getLogger(__name__)


def shared_handler(handler: Any) -> Any:
    """Return ``handler`` itself: lets ``train#handlers`` list an object defined elsewhere as a dict.

    MONAI's ``check_properties`` expects every entry of ``train#handlers`` to be a dict with a
    ``_target_``; a bare ``"@mlflow_tracking"`` reference would break it.
    """
    return handler


def iteration_loss(output: Any) -> float:
    """The loss of a trainer's iteration output (a dict, or MONAI's decollated list of dicts)."""
    loss = output[0]["loss"] if isinstance(output, list) else output["loss"]
    return float(loss.detach()) if isinstance(loss, torch.Tensor) else float(loss)


class MLflowTracking(MLflowGuard, MLFlowHandler):
    """MONAI's MLFlowHandler for a training workflow, which never stops the training.

    Args:
        tracking_uri: MLflow tracking URI, e.g. ``sqlite:///outputs/mlflow.db`` or
            ``http://127.0.0.1:5000``. ``MLFLOW_TRACKING_URI`` in the environment overrides it.
        experiment_name: MLflow experiment, created when missing. Default "lgg-segmentation".
        run_name: readable run name. Default None lets MLflow choose.
        experiment_param: recipe parameters to log at start (values stringified, nested dicts
            flattened to ``a.b`` names). Default None.
        tags: extra run tags. The git commit is added as ``git_commit`` when there is one.
        artifacts: files (or folders) logged when training completes; missing ones are skipped.
        run_dir: the run's output folder; the run id is written to ``<run_dir>/mlflow_run.json``
            and the merged config of the command line to ``<run_dir>/config.json``. Default None.
        flush_every: iterations between batched writes of per-iteration metrics. Default 50.
        retries: attempts for a locked SQLite database. Default 8 (a few minutes at worst).
        unavailable_pause: seconds without calls to an unavailable store. Default 300.
        enabled: False: a no-op that builds no client (ranks other than 0). Default True.
        iteration_log, epoch_log: MONAI's: log per iteration / per epoch (True, False or an ignite
            event filter). Default True.
        datasets: ``{context: {name, digest, source, ...}}`` logged as the run's dataset inputs
            (:func:`pipeline.tracking.run_inputs.dataset_inputs`). Default None.
        system_metrics: log MLflow's ``system/...`` metrics (CPU, memory, GPU) while training,
            every ``system_metrics_interval`` seconds (default 10). Needs psutil. Default True.
        model_file: the best weights (``model.pt``), logged at the end as the run's MLflow Model
            (pyfunc), linked to the validation metrics of its epoch. Default None: no model.

    Raises:
        ValueError: ``flush_every`` < 1, or a tracking URI MLflow cannot use (a plain folder).
    """

    def __init__(
        self,
        tracking_uri: str | None = None,
        experiment_name: str = "lgg-segmentation",
        run_name: str | None = None,
        experiment_param: Mapping[str, Any] | None = None,
        tags: Mapping[str, str] | None = None,
        artifacts: Sequence[str] = (),
        run_dir: str | None = None,
        flush_every: int = 50,
        retries: int = 8,
        unavailable_pause: float = 300.0,
        enabled: bool = True,
        iteration_log: Any = True,
        epoch_log: Any = True,
        datasets: Mapping[str, Mapping[str, Any]] | None = None,
        system_metrics: bool = True,
        system_metrics_interval: float = 10.0,
        model_file: str | None = None,
    ) -> None:
        if flush_every < 1:
            raise ValueError(f"flush_every must be >= 1, not {flush_every}")
        # the guard's state (pipeline.tracking.guard) and what MONAI's methods read, set before
        # MONAI's constructor, which builds the client last and may fail doing so
        self.tracking_uri = os.environ.get("MLFLOW_TRACKING_URI") or tracking_uri
        self.enabled, self.retries, self.unavailable_pause = enabled, max(1, retries), unavailable_pause
        self.failures: dict[str, int] = {}  # what was not logged -> how many values
        self.first_error: str | None = None
        self._paused_until, self._started, self._ok = 0.0, False, True
        self.client, self.experiment, self.cur_run, self.run_id = None, None, None, None
        self.run_finish_status, self.dataset_dict = "FINISHED", None
        self.run_name, self.experiment_name = run_name, experiment_name
        self.tags = dict(tags or {})
        self.experiment_param = {k: str(v)[:6000] for k, v in flatten(experiment_param or {}).items()}
        self.artifacts = tuple(str(a) for a in artifacts if a)
        self.run_dir = Path(run_dir) if run_dir else None
        self.flush_every, self.model_file, self._best_epoch = flush_every, model_file, 0
        self._buffer: list[tuple[str, Any]] = []  # ("iteration" or "epoch", metric)
        self._kind = "epoch"
        self.datasets = dict(datasets or {})
        self.system_metrics = SystemMetrics(system_metrics_interval) if system_metrics else None
        self.config = command_line_config() if enabled else None  # the merged config, recorded
        if not enabled:
            return
        with creation_lock(self.tracking_uri):
            self._call(
                "run",
                MLFlowHandler.__init__,
                self,
                tracking_uri=tracking_uri,
                iteration_log=iteration_log,
                epoch_log=epoch_log,
                output_transform=iteration_loss,
                tag_name="train_loss_iter",
                experiment_name=experiment_name,
                run_name=run_name,
                experiment_param=self.experiment_param,
                artifacts=self.artifacts,
                optimizer_param_names=(),  # logged as `lr` (see iteration_completed)
                artifact_location=artifact_location(self.tracking_uri),
                reraise=(ValueError,),
            )

    # -- MONAI's logging calls, guarded and batched ---------------------------------------------
    def _log_metrics(self, metrics: dict[str, Any], step: int | None = None) -> None:
        """Buffer the scalar ``metrics`` (others are skipped); written by :meth:`flush`."""
        from mlflow.entities import Metric

        stamp = int(time.time() * 1000)
        for key, value in flatten(metrics).items():
            if isinstance(value, torch.Tensor) and value.numel() == 1:
                value = value.item()
            if isinstance(value, (int, float)):
                self._buffer.append((self._kind, Metric(key, float(value), stamp, int(step or 0))))

    def _log_params(self, params: dict[str, Any]) -> None:
        """Log the parameters the run does not hold yet (a resumed run keeps its first values)."""
        from mlflow.entities import Param

        existing = self._call("params and tags", self.client.get_run, self.run_id, count=0)
        known = existing.data.params if existing is not None else {}
        self._log("params and tags", params=[Param(k, str(v)) for k, v in params.items() if k not in known])

    def _delete_exist_param_in_dict(self, param_dict: dict) -> None:
        """Nothing to do: :meth:`_log_params` skips the parameters already logged."""

    def flush(self) -> None:
        """Write the buffered metrics."""
        buffered, self._buffer = self._buffer, []
        for kind in ("iteration", "epoch"):  # the end-of-run report counts them apart
            self._log(f"{kind} metric values", metrics=[m for k, m in buffered if k == kind])

    # -- ignite ---------------------------------------------------------------------------------
    def attach(self, engine: Engine) -> None:
        """Attach to a trainer (MONAI's events and EXCEPTION_RAISED) or to an evaluator (its epoch
        metrics only); attaching twice is a no-op."""
        from monai.engines import Trainer

        if not self.enabled:
            return
        # MONAI attaches handlers before the trainer has its optimizer attribute: test the class
        if isinstance(engine, Trainer):
            super().attach(engine)
            if not engine.has_event_handler(self.exception_raised, Events.EXCEPTION_RAISED):
                engine.add_event_handler(Events.EXCEPTION_RAISED, self.exception_raised)
        elif not engine.has_event_handler(self.epoch_completed, Events.EPOCH_COMPLETED):
            engine.add_event_handler(Events.EPOCH_COMPLETED, self.epoch_completed)

    def start(self, engine: Engine) -> None:
        """Open (or, when ``<run_dir>/mlflow_run.json`` names one, continue) the MLflow run.

        Raises:
            ValueError: MONAI's own MLFlowHandler is attached too (``--tracking mlflow``).
        """
        refuse_second_tracker(engine, self)
        if not self.enabled or self.run_id is not None:
            return
        from mlflow.entities import RunTag

        self._started = True
        path = run_files.write_config(self.run_dir, self.config) if self.run_dir else None  # MLflow or not
        if path is not None and str(path) not in self.artifacts:
            self.artifacts = (*self.artifacts, str(path))
        commit = git_commit(Path(__file__).resolve().parent)
        tags = {**self.tags, **({"git_commit": commit} if commit else {})}
        if self.client is not None:
            self._call("run", self._set_experiment)  # MONAI's: find or create the experiment
        if self.experiment is not None:
            previous = run_files.recorded_run_id(self.run_dir)
            if previous is not None:  # a resumed run: its own MLflow run, marked running again
                self._call("run", self.client.update_run, previous, status="RUNNING")
                self.cur_run = self._call("run", self.client.get_run, previous) if self._ok else None
            else:
                run = (self.experiment.experiment_id, None, None, self.run_name)
                self.cur_run = self._call("run", self.client.create_run, *run)
        if self.cur_run is None:
            if self._ok:  # nothing failed, yet no run (an experiment that cannot be read back)
                self._not_logged("run", 1)
            self._not_logged("params and tags", len(self.experiment_param or {}) + len(tags))
            return
        self.run_id = self.cur_run.info.run_id
        if self.run_dir is not None:
            run_files.write_run_record(self.run_dir, self.run_id, self.tracking_uri, self.experiment_name)
        super().start(engine)  # MONAI's: the experiment parameters, max_epochs and epoch_length
        known = self.cur_run.inputs.dataset_inputs if self.cur_run.inputs else []
        inputs = dataset_inputs(self.datasets, known)
        if inputs:
            self._call("dataset inputs", self.client.log_inputs, self.run_id, inputs, count=len(inputs))
        if self.system_metrics is not None:
            self.system_metrics.start(self.run_id, self.tracking_uri, resume=previous is not None)
        self._log("params and tags", tags=[RunTag(k, str(v)) for k, v in tags.items()])
        logger.info("MLflow: run %s (%s) at %s", self.run_name, self.run_id, self.tracking_uri)

    def iteration_completed(self, engine: Engine) -> None:
        """MONAI's iteration log (the loss as ``train_loss_iter``), the learning rates as ``lr``
        (``lr_group_<i>`` for further groups), written every ``flush_every`` iterations."""
        self._kind = "iteration"
        super().iteration_completed(engine)
        lrs = {f"lr_group_{i}" if i else "lr": g["lr"] for i, g in enumerate(engine.optimizer.param_groups)}
        self._log_metrics(lrs, step=engine.state.iteration)
        if engine.state.iteration % self.flush_every == 0:
            self.flush()

    def epoch_completed(self, engine: Engine) -> None:
        """MONAI's epoch log of ``engine.state.metrics``, plus ``best_<key metric>`` from an
        evaluator; written at once, so a checkpoint never covers an epoch MLflow lacks."""
        self._kind = "epoch"
        super().epoch_completed(engine)
        best = getattr(engine.state, "best_metric", None)
        if engine.state.metrics and best is not None and best > -1:
            name = "best_" + (getattr(engine.state, "key_metric_name", None) or "metric")
            self._best_epoch = int(getattr(engine.state, "best_metric_epoch", engine.state.epoch))
            self._log_metrics({name: best}, step=engine.state.epoch)
        self.flush()

    def complete(self) -> None:
        """Flush, log the artifacts (merged config, split file, best model under ``models/``) and
        the best model as the run's MLflow Model."""
        from pipeline.tracking.logged_model import log_model

        self.flush()
        files = [path for path in self._parse_artifacts() if Path(path).is_file()]
        model = [self.model_file] if self.model_file and Path(self.model_file).is_file() else []
        if self.run_id is None:
            self._not_logged("artifacts", len(files))
            self._not_logged("model", len(model))
            return
        for path in files:
            subdir = "models" if path.endswith((".pt", ".ts", ".onnx")) else None
            self._call("artifacts", self.client.log_artifact, self.run_id, path, subdir)
        for path in model:
            epoch = self._best_epoch
            self._call("model", log_model, self.client, self.run_id, path, self.config, step=epoch)

    def exception_raised(self, engine: Engine, error: BaseException) -> None:
        self.flush()
        self.close(status="KILLED" if isinstance(error, KeyboardInterrupt) else "FAILED")
        raise error

    def close(self, status: str = "FINISHED") -> None:
        """End the MLflow run with ``status`` and report anything that could not be logged."""
        if self.system_metrics is not None:
            self.system_metrics.stop()
        if self.run_id is not None and self.cur_run is not None:
            self.flush()
            self._call("final run status", self.client.set_terminated, self.run_id, status)
            self.cur_run = None
        if self.client is not None:
            self._call("final run status", self._dispose_sqlite_store, count=0)
        self._report_not_logged(f"The checkpoints and {self.run_dir or 'the run folder'} hold the results.")
