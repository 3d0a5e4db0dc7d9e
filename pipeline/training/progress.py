"""Progress a person can follow: a bar per epoch with loss and ETA, and a line per epoch."""

from __future__ import annotations

import logging
import sys
import time

from ignite.engine import Engine, Events

logger = logging.getLogger(__name__)


class TrainingProgress:
    """Per-epoch progress bar (loss, ETA) and a one-line summary per epoch.

    Attach it to the trainer *after* the ValidationHandler (so the epoch's validation metrics
    exist) and before the MLflow handler (so ``train_loss``, the epoch's mean loss, is logged).

    Args:
        evaluator: the validation evaluator whose metrics the summary line shows. Default None.
        bar: show a tqdm progress bar when stderr is a terminal. Default True; disable it with
            ``--show_progress false``. Without a terminal only the per-epoch lines are logged.
        enabled: False makes it a no-op (other ranks than 0 under torch.distributed). Default True.
    """

    def __init__(self, evaluator: Engine | None = None, bar: bool | str = True, enabled: bool = True) -> None:
        self.evaluator = evaluator
        # `--show_progress false` on the command line arrives as the string "false"
        self.bar = bar.strip().lower() in ("1", "true", "yes", "on") if isinstance(bar, str) else bool(bar)
        self.enabled = enabled
        self._loss_sum = 0.0
        self._count = 0
        self._started = 0.0

    def attach(self, engine: Engine) -> None:
        if engine.has_event_handler(self.epoch_started, Events.EPOCH_STARTED):
            return
        engine.add_event_handler(Events.EPOCH_STARTED, self.epoch_started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.iteration_completed)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.epoch_completed)
        if self.bar and self.enabled and sys.stderr.isatty():  # a bar in a log file is noise
            from ignite.handlers import ProgressBar

            ProgressBar(persist=False, bar_format=None).attach(
                engine, output_transform=lambda out: {"loss": _loss(out)}
            )

    def epoch_started(self, engine: Engine) -> None:
        self._loss_sum, self._count, self._started = 0.0, 0, time.perf_counter()

    def iteration_completed(self, engine: Engine) -> None:
        self._loss_sum += _loss(engine.state.output)
        self._count += 1

    def epoch_completed(self, engine: Engine) -> None:
        seconds = time.perf_counter() - self._started
        engine.state.metrics["train_loss"] = self._loss_sum / max(self._count, 1)
        engine.state.metrics["epoch_seconds"] = seconds
        if not self.enabled:
            return
        parts = [f"epoch {engine.state.epoch}/{engine.state.max_epochs}"]
        parts.append(f"train_loss {engine.state.metrics['train_loss']:.4f}")
        # the evaluator's metrics only when it ran this epoch (val_interval may skip epochs)
        if self.evaluator is not None and self.evaluator.state.epoch == engine.state.epoch:
            for name, value in sorted(self.evaluator.state.metrics.items()):
                if isinstance(value, float):
                    parts.append(f"{name} {value:.4f}")
        parts.append(f"{seconds:.1f}s")
        logger.info(" | ".join(parts))


def _loss(output: object) -> float:
    if isinstance(output, list):
        output = output[0]
    return float(output["loss"].detach())  # type: ignore[index]
