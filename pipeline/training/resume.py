"""Resume a killed training run exactly, and make every epoch reproducible from (seed, epoch).

Resuming: ``--resume true`` continues the most recent run under ``<output_root>/runs`` (or the
one named by ``--run_name``) from its newest ``checkpoint_epoch=N.pt``: network, optimizer,
one-cycle scheduler position, epoch/iteration and best-model bookkeeping are restored, and the
same MLflow run is continued (its id is in ``<run_dir>/mlflow_run.json``). A kill mid-epoch loses
only that epoch's progress: it is redone identically.

Reproducibility: ``EpochSeeding`` reseeds torch, numpy, random, the dataset's random transforms
and a randomized ``collate_fn`` of the trainer's DataLoader (train.json's
``transforms.BatchAugmentation``) at the start of every epoch from ``(seed, epoch, rank)``. The
sampler's draws, the augmentations and dropout of epoch k therefore do not depend on what ran
before, which is what makes a resumed run match an uninterrupted one. (DataLoader workers are therefore not
persistent: each epoch's workers are seeded afresh.)
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine, Events
from monai.handlers import CheckpointLoader, ValidationHandler

from pipeline.flags import truthy
from pipeline.training.checkpoints import RunCheckpoints
from pipeline.training.runs import readable_run_name, reserve_run_dir

logger = logging.getLogger(__name__)


def _rank() -> int:
    dist = torch.distributed
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def epoch_seed(seed: int, epoch: int, rank: int = 0) -> int:
    """The seed of one epoch of one rank (distinct for every (seed, epoch, rank) in practice)."""
    return (int(seed) * 1_000_003 + int(epoch) * 9_973 + int(rank) * 101) % (2**31 - 1)


class EpochSeeding:
    """Reseed everything random at the start of every epoch.

    Args:
        seed: the run's seed.
        dataset: the training dataset; its ``transform`` (a Compose) is reseeded too.

    The ``collate_fn`` of the engine's ``data_loader`` is reseeded too when it has a
    ``set_random_state`` method (the augmentations of train.json run there).
    """

    def __init__(self, seed: int, dataset: Any = None) -> None:
        self.seed = int(seed)
        self.dataset = dataset

    def attach(self, engine: Engine) -> None:
        if not engine.has_event_handler(self, Events.EPOCH_STARTED):
            engine.add_event_handler(Events.EPOCH_STARTED, self)

    def __call__(self, engine: Engine) -> None:
        from monai.utils import set_determinism

        value = epoch_seed(self.seed, engine.state.epoch, _rank())
        set_determinism(seed=value)
        transform = getattr(self.dataset, "transform", None)
        if hasattr(transform, "set_random_state"):
            transform.set_random_state(seed=value)
        collate = getattr(getattr(engine, "data_loader", None), "collate_fn", None)
        if hasattr(collate, "set_random_state"):
            collate.set_random_state(seed=value)


def resolve_run_name(output_root: str, resume: bool | str, prefix: str = "unet", **settings: object) -> str:
    """A new readable run name (its folder created at once), or with ``resume`` the newest run.

    A new name is reserved by creating ``<output_root>/runs/<name>``, with a ``-2``, ``-3``
    suffix when two runs start in the same second; with ``resume``, the run with the newest
    checkpoint is taken.

    Raises:
        FileNotFoundError: ``resume`` is set but no run under ``<output_root>/runs`` has one.
    """
    if not truthy(resume):
        return reserve_run_dir(Path(output_root) / "runs", readable_run_name(prefix, **settings))
    runs = [p.parent.parent for p in Path(output_root).glob("runs/*/models/checkpoint_epoch=*.pt")]
    if not runs:
        raise FileNotFoundError(
            f"--resume: no run under {Path(output_root) / 'runs'} holds a checkpoint_epoch=N.pt; "
            "start a new run without --resume"
        )
    return max(set(runs), key=lambda p: p.stat().st_mtime).name


class ResumeTraining:
    """On trainer start, restore the newest epoch checkpoint of the run (when resuming).

    A thin handler on MONAI's ``CheckpointLoader`` (weights-only loading of everything the
    checkpoint saver saves: network, optimizer, scheduler, trainer, best-model bookkeeping); what
    it adds is choosing the file when training starts and refusing a checkpoint written with
    another number of iterations per epoch.

    Args:
        checkpoints: the run's epoch checkpoint saver (:class:`pipeline.training.checkpoints.RunCheckpoints`).
        resume: restore only when true. Default False.
    """

    def __init__(self, checkpoints: RunCheckpoints, resume: bool | str = False):
        self.checkpoints = checkpoints
        self.resume = truthy(resume)
        self.resumed_from: Path | None = None

    def attach(self, engine: Engine) -> None:
        if not engine.has_event_handler(self, Events.STARTED):
            engine.add_event_handler(Events.STARTED, self)

    def __call__(self, engine: Engine) -> None:
        if not self.resume:
            return
        files = self.checkpoints.epoch_files()
        if not files:
            raise FileNotFoundError(
                f"--resume: no checkpoint_epoch=N.pt in {self.checkpoints.save_dir}; start without --resume"
            )
        path, epoch_length = files[-1], engine.state.epoch_length
        CheckpointLoader(load_path=str(path), load_dict=dict(self.checkpoints.save_dict), map_location="cpu")(
            engine
        )
        if engine.state.epoch_length != epoch_length:
            raise ValueError(
                f"{path} was written with {engine.state.epoch_length} iterations per epoch, this run has "
                f"{epoch_length}: resume with the same data, batch size and settings"
            )
        self.resumed_from = path
        logger.info(
            "Resumed from %s: epoch %d, iteration %d", path, engine.state.epoch, engine.state.iteration
        )


class PeriodicValidation(ValidationHandler):
    """MONAI's ``ValidationHandler`` every ``interval`` epochs, and always after the last epoch.

    With MONAI's alone, ``--epochs 1`` and ``val_interval`` 2 never validate: no model.pt, no Dice.

    Args:
        interval: epochs between validations.
        validator: the evaluator to run.
        exec_at_start: also validate before training. Default False.
    """

    def __init__(self, interval: int, validator: Any = None, exec_at_start: bool = False) -> None:
        super().__init__(
            interval=interval, validator=validator, epoch_level=True, exec_at_start=exec_at_start
        )

    def _due(self, engine: Engine, epoch: int) -> bool:
        return epoch % self.interval == 0 or epoch == engine.state.max_epochs

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED(event_filter=self._due), self)
        if self.exec_at_start:
            engine.add_event_handler(Events.STARTED, self)


QUOTES = " \"'"


def validate_settings(epochs: Any, batch_size: Any, image_size: Any, depth: Any, learning_rate: Any) -> None:
    """Refuse config values that cannot train, naming the key and the fix, before any work starts."""

    def whole(name: str, value: Any, minimum: int) -> int:
        if isinstance(value, str):  # `--epochs '"2"'`: the bundle CLI passed a quoted string through
            bare = value.strip(QUOTES) or str(minimum)
            raise ValueError(
                f"--{name} must be a whole number >= {minimum}, not the string {value!r}: "
                f"pass it without quotes (--{name} {bare})"
            )
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ValueError(f"--{name} must be a whole number >= {minimum}, not {value!r}")
        return value

    whole("epochs", epochs, 1)
    whole("batch_size", batch_size, 1)
    size = whole("image_size", image_size, 1)
    multiple = 2 ** (whole("network_def#depth", depth, 1) - 1)
    if size % multiple:
        raise ValueError(
            f"--image_size must be divisible by {multiple} (2**(depth-1) for the U-Net's poolings), "
            f"not {size}: try {max(multiple, size // multiple * multiple)}"
        )
    if isinstance(learning_rate, bool) or not isinstance(learning_rate, (int, float)) or learning_rate <= 0:
        raise ValueError(f"--learning_rate must be a positive number, not {learning_rate!r}")
