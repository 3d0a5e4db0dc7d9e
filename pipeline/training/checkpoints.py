"""Checkpoint handlers: every epoch (last few kept), the best model, and a final resumable one.

All files are written atomically (temporary file in the same folder, fsync, then rename), so a
kill at any moment leaves either the previous file or the new one, never a truncated one.

- ``EpochCheckpoints`` (trainer): ``checkpoint_epoch=<N>.pt`` every ``interval`` epochs, keeping
  the last ``keep_last``, and ``final.pt`` when training completes. Each holds everything a
  resume needs: network, optimizer, scheduler, trainer state (epoch/iteration), and the best
  metric so far.
- ``BestModel`` (evaluator): ``model.pt``, a plain ``state_dict`` of the network (what MONAI's
  CheckpointLoader, ckpt_export and MONAI Label expect), written when the key metric improves.
"""

from __future__ import annotations

import logging
import math
import os
import re
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine, Events

logger = logging.getLogger(__name__)


def atomic_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` to ``path`` through a temporary file and a rename (never a partial file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


class BestModel:
    """Save the network's ``state_dict`` when the evaluator's key metric improves.

    Args:
        save_dir: folder of the file.
        network: the network whose weights are saved.
        metric_name: metric of ``engine.state.metrics`` to maximise. Default "val_volume_dice".
        filename: default "model.pt".
        enabled: False makes it a no-op (ranks other than 0). Default True.
    """

    def __init__(
        self,
        save_dir: str,
        network: torch.nn.Module,
        metric_name: str = "val_volume_dice",
        filename: str = "model.pt",
        enabled: bool = True,
    ) -> None:
        self.path = Path(save_dir) / filename
        self.network = network
        self.metric_name = metric_name
        self.enabled = enabled
        self.best = -math.inf
        self.best_epoch = -1

    def attach(self, engine: Engine) -> None:
        if not engine.has_event_handler(self, Events.EPOCH_COMPLETED):
            engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        value = engine.state.metrics.get(self.metric_name)
        if value is None:
            raise KeyError(
                f"BestModel: metric {self.metric_name!r} is not among the evaluator's metrics "
                f"{sorted(engine.state.metrics)}; set metric_name to one of them"
            )
        if float(value) > self.best:
            self.best, self.best_epoch = float(value), int(engine.state.epoch)
            if self.enabled:
                module = getattr(self.network, "module", self.network)  # unwrap DDP
                atomic_save(module.state_dict(), self.path)
                logger.info(
                    "New best %s %.4f at epoch %d: saved %s",
                    self.metric_name,
                    value,
                    self.best_epoch,
                    self.path,
                )

    def state_dict(self) -> dict:
        return {"best": self.best, "best_epoch": self.best_epoch}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.best_epoch = float(state["best"]), int(state["best_epoch"])


class EpochCheckpoints:
    """Resumable checkpoints of the trainer every ``interval`` epochs, plus ``final.pt``.

    Args:
        save_dir: folder of the checkpoints.
        network: the network.
        optimizer: the optimizer.
        lr_scheduler: the learning-rate scheduler (stepped per iteration).
        best_model: the ``BestModel`` handler, whose bookkeeping is saved too. Default None.
        keep_last: epoch checkpoints kept (older ones deleted). Default 3.
        interval: epochs between checkpoints. Default 1.
        enabled: False makes it a no-op (ranks other than 0). Default True.
    """

    pattern = re.compile(r"^checkpoint_epoch=(\d+)\.pt$")

    def __init__(
        self,
        save_dir: str,
        network: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        lr_scheduler: Any,
        best_model: BestModel | None = None,
        keep_last: int = 3,
        interval: int = 1,
        enabled: bool = True,
    ) -> None:
        if keep_last < 1:
            raise ValueError(f"keep_last must be >= 1, not {keep_last}")
        if interval < 1:
            raise ValueError(f"interval must be >= 1, not {interval}")
        self.save_dir = Path(save_dir)
        self.network = network
        self.optimizer = optimizer
        self.lr_scheduler = lr_scheduler
        self.best_model = best_model
        self.keep_last = keep_last
        self.interval = interval
        self.enabled = enabled

    def attach(self, engine: Engine) -> None:
        if not engine.has_event_handler(self.epoch_completed, Events.EPOCH_COMPLETED):
            engine.add_event_handler(Events.EPOCH_COMPLETED, self.epoch_completed)
            engine.add_event_handler(Events.COMPLETED, self.completed)

    def checkpoint(self, engine: Engine) -> dict:
        """Everything a resume needs, as plain tensors and numbers (loadable with weights_only)."""
        module = getattr(self.network, "module", self.network)
        return {
            "network": module.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "lr_scheduler": self.lr_scheduler.state_dict(),
            "trainer": {
                "epoch": int(engine.state.epoch),
                "iteration": int(engine.state.iteration),
                "max_epochs": int(engine.state.max_epochs),
                "epoch_length": int(engine.state.epoch_length),
            },
            "best_model": self.best_model.state_dict() if self.best_model else None,
        }

    def epoch_completed(self, engine: Engine) -> None:
        if not self.enabled or engine.state.epoch % self.interval:
            return
        atomic_save(self.checkpoint(engine), self.save_dir / f"checkpoint_epoch={engine.state.epoch}.pt")
        for old in self.epoch_files()[: -self.keep_last]:
            old.unlink(missing_ok=True)

    def completed(self, engine: Engine) -> None:
        if self.enabled:
            atomic_save(self.checkpoint(engine), self.save_dir / "final.pt")

    def epoch_files(self) -> list[Path]:
        """Epoch checkpoints in the folder, oldest first."""
        found = [
            (int(m.group(1)), p)
            for p in self.save_dir.glob("checkpoint_epoch=*.pt")
            if (m := self.pattern.match(p.name))
        ]
        return [p for _, p in sorted(found)]


def load_weights(network: torch.nn.Module, path: str | Path) -> torch.nn.Module:
    """Load weights into ``network`` from ``model.pt`` (a state_dict) or a training checkpoint.

    Loading is weights-only: a file that needs arbitrary pickled objects is refused.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is not a weights-only checkpoint, or it belongs to another network
            (the message lists the first mismatching keys or shapes).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist; pass --ckpt_path /path/to/model.pt")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise ValueError(
            f"{path} cannot be loaded weights-only ({type(error).__name__}: {str(error).splitlines()[0]}). "
            "Checkpoints holding arbitrary pickled objects are refused: they can run code when loaded. "
            "Re-save the weights with torch.save(network.state_dict(), path)."
        ) from error
    if isinstance(state, dict) and "network" in state and isinstance(state["network"], dict):
        state = state["network"]
    if not isinstance(state, dict):
        raise ValueError(f"{path} holds a {type(state).__name__}, expected a state_dict of tensors")
    target = network.state_dict()
    missing = sorted(set(target) - set(state))
    unexpected = sorted(set(state) - set(target))
    shapes = [k for k in target if k in state and tuple(state[k].shape) != tuple(target[k].shape)]
    if missing or unexpected or shapes:
        details = []
        if shapes:
            details.append(
                "shape mismatch: "
                + ", ".join(f"{k} {tuple(state[k].shape)} vs {tuple(target[k].shape)}" for k in shapes[:3])
            )
        if missing:
            details.append(f"missing keys: {missing[:3]}")
        if unexpected:
            details.append(f"unexpected keys: {unexpected[:3]}")
        raise ValueError(
            f"{path} does not fit the configured network ({'; '.join(details)}). It was trained with other "
            "network settings: pass the same --network_def#... overrides as for training."
        )
    network.load_state_dict(state)
    return network
