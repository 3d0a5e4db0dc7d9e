"""What a training run tells the user when it stops: the summary at the end, the notice on Ctrl-C."""

from __future__ import annotations

import logging
import re
import shlex
import signal
import threading
from typing import Any

from ignite.engine import Engine, Events

from pipeline.errors import set_interrupt_notice
from pipeline.tracking.provenance import bundle_arguments

logger = logging.getLogger(__name__)

EVALUATE = "bundle/configs/evaluate.json"
_PLAIN = re.compile(r"^[\w@%+=:,./#-]+$")  # needs no quoting in a POSIX shell
INFERENCE = "bundle/configs/inference.json"


class _EmptyExceptionLine(logging.Filter):
    """Drops ignite's "Engine run is terminating due to exception: " line when the text is empty (Ctrl-C)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage().rstrip() != "Engine run is terminating due to exception:"


class InterruptNotice:
    """On Ctrl-C: one line saying the epoch reached, the checkpoint and the command that resumes.

    Registered with :func:`pipeline.errors.set_interrupt_notice`, printed by the exception hook
    instead of the traceback. List it before the MLflow handler, which marks the run KILLED.

    Args:
        checkpoints: the run's epoch checkpoint saver (its ``epoch_files()``).
        run_name: the run's name (``--run_name`` of the resume command).
        enabled: False makes it a no-op (other ranks than 0). Default True.
    """

    def __init__(self, checkpoints: Any, run_name: str, enabled: bool = True) -> None:
        self.checkpoints = checkpoints
        self.run_name = run_name
        self.enabled = enabled

    def attach(self, engine: Engine) -> None:
        if not engine.has_event_handler(self, Events.EXCEPTION_RAISED):
            engine.add_event_handler(Events.EXCEPTION_RAISED, self)
            engine.logger.addFilter(_EmptyExceptionLine())
            engine.add_event_handler(Events.STARTED, self._catch_ctrl_c)
            engine.add_event_handler(Events.ITERATION_COMPLETED, self._stop_if_interrupted)
            engine.add_event_handler(Events.COMPLETED, self._release_ctrl_c)

    # Python raises KeyboardInterrupt wherever the main thread is when Ctrl-C arrives; inside an
    # object's finalizer (MLflow's and SQLAlchemy's sessions have them) it is printed as "Exception
    # ignored" and lost, and training went on (seen in CI). So the first Ctrl-C only sets a flag,
    # and the trainer raises KeyboardInterrupt after the current iteration; a second one raises
    # at once, as Python's own handler does.
    _previous: Any = None
    _interrupted = False

    def _catch_ctrl_c(self, engine: Engine) -> None:
        if threading.current_thread() is threading.main_thread():
            self._interrupted = False
            self._previous = signal.signal(signal.SIGINT, self._on_ctrl_c)

    def _on_ctrl_c(self, signum: int, frame: Any) -> None:
        if self._interrupted:
            raise KeyboardInterrupt
        self._interrupted = True
        logger.warning("Ctrl-C: stopping after this iteration (Ctrl-C again to stop at once)")

    def _stop_if_interrupted(self, engine: Engine) -> None:
        if self._interrupted:
            self._release_ctrl_c(engine)
            raise KeyboardInterrupt

    def _release_ctrl_c(self, engine: Engine) -> None:
        if self._previous is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None

    def resume_command(self) -> str:
        """This process's bundle command (configs, overrides) with ``--run_name R --resume true``."""
        configs, args = _cli_args(drop=("--resume", "--run_name"))
        words = [*(["--config_file", _config_arg(configs)] if configs else []), *map(_quote, args)]
        return " ".join(
            [
                "python -m monai.bundle run training",
                *words,
                "--run_name",
                _quote(self.run_name),
                "--resume true",
            ]
        )

    def __call__(self, engine: Engine, error: BaseException) -> None:
        self._release_ctrl_c(engine)
        if not self.enabled or not isinstance(error, KeyboardInterrupt):
            return
        files = self.checkpoints.epoch_files()
        if files:
            notice = (
                f"Training interrupted in epoch {engine.state.epoch}; {files[-1].name} holds epoch "
                f"{files[-1].stem.split('=')[-1]}. Resume with: {self.resume_command()}"
            )
        else:
            notice = "Training interrupted before the first epoch's checkpoint; nothing to resume from."
        set_interrupt_notice(notice)


def _cli_args(drop: tuple[str, ...]) -> tuple[list[str], list[str]]:
    """(config files, other arguments) of this process's bundle command, without the ``drop`` options."""
    configs, pairs = bundle_arguments()
    return configs, [word for key, value in pairs if f"--{key}" not in drop for word in (f"--{key}", value)]


def _quote(word: str) -> str:
    return word if _PLAIN.match(word) else shlex.quote(word)


def _config_arg(configs: list[str]) -> str:
    """``--config_file``'s value as the README writes it: a path, or ``"['a.json','b.json']"``."""
    if len(configs) == 1:
        return _quote(configs[0])
    return '"[' + ",".join(f"'{c}'" for c in configs) + ']"'


class RunSummary:
    """At the end of training, a few lines saying what a user needs next.

    Best per-volume Dice and its epoch, the model.pt path, the MLflow run (name, id, URI) and
    the commands to evaluate, infer, export and open the MLflow UI on that run. The evaluate
    command repeats this process's config files and overrides; the infer command needs only the
    checkpoint, which brings its network settings and image size (its run's config.json).

    Args:
        evaluator: the validation evaluator (``best_metric``, ``best_metric_epoch``).
        best_model: the best-model saver (its ``path``).
        tracking: the MLflow tracking handler (``run_id``, ``run_name``, ``tracking_uri``).
        enabled: False makes it a no-op (other ranks than 0). Default True.
    """

    def __init__(
        self,
        evaluator: Engine,
        best_model: Any,
        tracking: Any,
        enabled: bool = True,
    ) -> None:
        self.evaluator = evaluator
        self.best_model = best_model
        self.tracking = tracking
        self.enabled = enabled

    def attach(self, engine: Engine) -> None:
        if not engine.has_event_handler(self, Events.COMPLETED):
            engine.add_event_handler(Events.COMPLETED, self)

    def lines(self) -> list[str]:
        state, model, tracking = self.evaluator.state, self.best_model.path, self.tracking
        metric = getattr(state, "key_metric_name", None) or "val_volume_dice"
        out = [
            f"Training finished: best {metric} {state.best_metric:.4f} at epoch {state.best_metric_epoch}",
            f"  model: {model}",
        ]
        if tracking.run_id:
            out.append(f"  MLflow run: {tracking.run_name} ({tracking.run_id}) at {tracking.tracking_uri}")
        else:
            out.append(
                f"  MLflow run: not logged ({tracking.tracking_uri}); the run folder holds the results"
            )
        configs, args = _cli_args(drop=("--resume", "--run_name", "--ckpt_path"))
        configs = [c for c in configs or ["bundle/configs/train.json"] if "multi_gpu" not in c]
        overrides = "".join(f" {_quote(a)}" for a in args)
        ckpt = _quote(str(model))
        bundle = "python -m monai.bundle run --config_file"
        out += [
            "  next:",
            f"    evaluate: {bundle} {_config_arg([*configs, EVALUATE])}{overrides} --ckpt_path {ckpt}",
            f"    infer:    {bundle} {INFERENCE} --ckpt_path {ckpt} --dataset_dir <folder of scans>",
            f"    export:   python -m pipeline export --checkpoint {ckpt} --out exports/{tracking.run_name}",
        ]
        if tracking.run_id:
            out.append(
                f"    MLflow UI: mlflow ui --backend-store-uri {tracking.tracking_uri} --workers 1 "
                "--host 127.0.0.1 --port 5000"
            )
        return out

    def __call__(self, engine: Engine) -> None:
        if self.enabled:
            for line in self.lines():
                logger.info("%s", line)
