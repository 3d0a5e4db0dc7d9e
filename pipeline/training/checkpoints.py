"""Checkpoints on MONAI's CheckpointSaver, with what MONAI lacks added: atomic writes and a resumable best.

train.json wires two savers, as model-zoo bundles do:

- ``epoch_checkpoints`` (trainer): MONAI's ``CheckpointSaver`` with ``save_interval`` 1 and
  ``n_saved`` (``checkpoint_epoch=<N>.pt``, the last few kept) and ``final.pt`` at completion.
  Each holds everything a resume needs: ``network``, ``optimizer``, ``lr_scheduler``, ``trainer``
  (ignite's epoch, iteration, epoch length) and ``best_model`` (the best saver's bookkeeping).
  The trainer is added to what is saved when the saver is attached to it, since the config cannot
  reference the trainer from inside the trainer's own handler list.
- ``best_model`` (evaluator): a :class:`BestModelSaver`, MONAI's key-metric saver writing
  ``model.pt``, a plain ``state_dict`` of the network (what MONAI's CheckpointLoader,
  ``ckpt_export`` and MONAI Label expect), when ``val_volume_dice`` improves.

What is added to MONAI, and why:

- Every file is written atomically (:class:`AtomicSaver`: temporary file, fsync, rename). MONAI's
  saver writes in place (``atomic=False``), so a kill during a write leaves a truncated file.
- :class:`BestModelSaver` saves and restores the evaluator's ``best_metric``/``best_metric_epoch``
  and its own list of saved scores through ``state_dict``. MONAI's ``key_metric_save_state``
  would put that state into ``model.pt`` itself, which would then no longer be a plain state_dict;
  without it a resumed run restarts its best at -1 (and overwrites model.pt with a worse epoch).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import ignite.distributed as idist
import torch
from ignite.engine import Engine
from ignite.handlers.checkpoint import BaseSaveHandler
from monai.handlers import CheckpointSaver

from pipeline.atomic import write_atomically
from pipeline.training.weights import read_weights, weights_mismatch

logger = logging.getLogger(__name__)

EPOCH_FILE = re.compile(r"^checkpoint_epoch=(\d+)\.pt$")


class AtomicSaver(BaseSaveHandler):
    """ignite save handler: ``torch.save`` into ``dirname`` through a temporary file and a rename.

    Args:
        dirname: folder of the files (created when missing).
        filename: a fixed file name that replaces ignite's (``model.pt``, ``final.pt``). Default None.
    """

    def __init__(self, dirname: str | Path, filename: str | None = None) -> None:
        self.dirname = Path(dirname)
        self.filename = filename

    def __call__(self, checkpoint: Mapping, filename: str, metadata: Mapping | None = None) -> None:
        if idist.get_rank() == 0:  # as ignite's DiskSaver: one rank writes
            path = self.dirname / (self.filename or filename)
            write_atomically(path, lambda tmp: torch.save(checkpoint, tmp), durable=True)

    def remove(self, filename: str) -> None:
        if idist.get_rank() == 0:
            (self.dirname / (self.filename or filename)).unlink(missing_ok=True)


class RunCheckpoints(CheckpointSaver):
    """MONAI's ``CheckpointSaver`` writing atomically; on a trainer it also saves the trainer's state.

    Args:
        save_dir: folder of the checkpoints.
        save_dict: name -> object with ``state_dict`` (network, optimizer, lr_scheduler, ...).
        **kwargs: the other arguments of ``monai.handlers.CheckpointSaver`` (``save_interval``,
            ``n_saved``, ``save_final``, ``final_filename``, ``save_key_metric``, ...).
    """

    def __init__(self, save_dir: str, save_dict: dict, **kwargs: Any) -> None:
        super().__init__(save_dir=save_dir, save_dict=dict(save_dict), **kwargs)
        # the Checkpoint objects MONAI built keep its non-atomic saver: give them ours
        filenames = {
            "_final_checkpoint": kwargs.get("final_filename"),
            "_key_metric_checkpoint": kwargs.get("key_metric_filename"),
            "_interval_checkpoint": None,
        }
        for attribute, filename in filenames.items():
            checkpoint = getattr(self, attribute)
            if checkpoint is not None:
                checkpoint.save_handler = AtomicSaver(save_dir, filename)
        self.save_dir_path = Path(save_dir)

    def attach(self, engine: Engine) -> None:
        from monai.engines import Trainer

        if isinstance(engine, Trainer):
            # the same dict object the Checkpoints hold: the trainer's epoch and iteration are saved too
            self.save_dict.setdefault("trainer", engine)
        super().attach(engine)

    def epoch_files(self) -> list[Path]:
        """Epoch checkpoints in the folder, oldest first."""
        found = [
            (int(m.group(1)), p)
            for p in self.save_dir_path.glob("checkpoint_epoch=*.pt")
            if (m := EPOCH_FILE.match(p.name))
        ]
        return [p for _, p in sorted(found)]


class BestModelSaver(RunCheckpoints):
    """The evaluator's key-metric saver: ``model.pt`` (a plain state_dict) when the metric improves.

    Args:
        save_dir: folder of ``model.pt``.
        network: the network (a DDP wrapper is unwrapped by ignite).
        metric_name: the evaluator's metric to maximise. Default "val_volume_dice".
        filename: default "model.pt".

    ``state_dict()`` holds the evaluator's best value and epoch and the saver's own record, so that
    the trainer's epoch checkpoints carry them and a resumed run keeps its best.
    """

    def __init__(
        self,
        save_dir: str,
        network: torch.nn.Module,
        metric_name: str = "val_volume_dice",
        filename: str = "model.pt",
    ) -> None:
        super().__init__(
            save_dir=save_dir,
            save_dict={"model": network},
            save_key_metric=True,
            key_metric_name=metric_name,
            key_metric_filename=filename,
        )
        self.metric_name = metric_name
        self.path = Path(save_dir) / filename
        self._engine: Engine | None = None

    def attach(self, engine: Engine) -> None:
        if self._engine is engine:
            return
        self._engine = engine
        super().attach(engine)

    @property
    def best(self) -> float:
        """The best value so far (-1 before the first validation, MONAI's convention)."""
        return float(getattr(self._engine.state, "best_metric", -1)) if self._engine else -1.0

    @property
    def best_epoch(self) -> int:
        return int(getattr(self._engine.state, "best_metric_epoch", -1)) if self._engine else -1

    def state_dict(self) -> dict:
        return {
            "best": self.best,
            "best_epoch": self.best_epoch,
            "saved": [list(item) for item in self._key_metric_checkpoint.state_dict()["_saved"]],
        }

    def load_state_dict(self, state: Mapping) -> None:
        if self._engine is not None:
            self._engine.state.best_metric = float(state["best"])
            self._engine.state.best_metric_epoch = int(state["best_epoch"])
        saved = [tuple(item) for item in state.get("saved", [])]
        self._key_metric_checkpoint.load_state_dict({"_saved": saved})


def load_weights(network: torch.nn.Module, path: str | Path, hint: str | None = None) -> torch.nn.Module:
    """Load weights into ``network`` from ``model.pt`` (a state_dict) or a training checkpoint.

    Loading is weights-only (:func:`read_weights`).

    Args:
        network: the network to load into.
        path: the weights file.
        hint: what to do when the weights do not fit, for the error message. Default None: pass
            the same ``--network_def#...`` overrides as for training.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is not a weights-only checkpoint, or it belongs to another network
            (the message lists the first mismatching keys or shapes).
    """
    state = read_weights(path)
    details = weights_mismatch(network, state)
    if details:
        raise ValueError(
            f"{path} does not fit the configured network ({details}). "
            + (
                hint
                or "It was trained with other network settings: pass the same --network_def#... "
                "overrides as for training."
            )
        )
    network.load_state_dict(state)
    return network
