"""Run folders and run names: where a training run writes, and what it is called."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

from pipeline.flags import truthy

logger = logging.getLogger(__name__)


def readable_run_name(prefix: str = "unet", **settings: object) -> str:
    """A run name a person can read in MLflow: ``<prefix>-<k><v>...-<yyyymmdd-HHMMSS>``.

    Example: ``readable_run_name("unet", f=6, s=256, e=20)`` -> ``unet-f6-s256-e20-20261125-081500``.
    """
    parts = [prefix] + [f"{key}{value}" for key, value in settings.items()]
    return "-".join(parts + [time.strftime("%Y%m%d-%H%M%S")])


def loader_workers(limit: int = 4) -> int:
    """The bundle's default ``num_workers``: :func:`default_workers` with a GPU, 0 on a CPU.

    On a CPU the augmentation costs less in the main process than a worker's inter-process
    transfer, and a worker only competes with the training step's own threads.
    """
    import torch

    return default_workers(limit) if torch.cuda.is_available() else 0


def default_workers(limit: int = 4) -> int:
    """DataLoader workers sized to the machine: one per spare core, at most ``limit``, 0 on 1 core.

    The training step itself uses the cores (torch intra-op threads), so the loader gets the
    cores beyond the first; with the preprocessed slices cached, augmentation is cheap.
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(0, min(limit, cores - 1))


_RESERVED: set[str] = set()  # run folders this process created for a new run


def is_rank0() -> bool:
    """True outside torch.distributed, and on rank 0 inside it."""
    import torch.distributed as dist

    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def reserve_run_dir(runs_root: str | Path, name: str) -> str:
    """Create ``<runs_root>/<name>`` exclusively and return the name it got.

    A name already taken (another run started in the same second, a sweep launched from a
    script) gets ``-2``, ``-3``, ... appended, so every new run has its own folder. Only rank 0
    of a distributed run creates anything; the other ranks take rank 0's name.
    """
    if not is_rank0():
        return name
    root = Path(runs_root)
    root.mkdir(parents=True, exist_ok=True)
    for attempt in range(1, 1000):
        candidate = name if attempt == 1 else f"{name}-{attempt}"
        try:
            (root / candidate).mkdir()
        except FileExistsError:
            continue
        _RESERVED.add(str((root / candidate).resolve()))
        return candidate
    raise FileExistsError(f"{root}: 999 runs named {name}-N exist; clean up {root}")


def check_output_dir(output_dir: str | Path, output_root: str | Path) -> None:
    """Refuse ``--output_dir``: in this bundle a run's outputs go under ``--output_root``.

    Model-zoo bundles write to ``output_dir``; here every run writes checkpoints, its config and
    its MLflow run file to ``<output_root>/runs/<run name>/`` (``output_dir`` is that folder) and
    MLflow to ``<output_root>/mlflow.db``, so an ``--output_dir`` elsewhere would move only part.

    Raises:
        ValueError: ``output_dir`` is not a run folder under ``<output_root>/runs``.
    """
    runs = (Path(output_root) / "runs").resolve()
    if Path(output_dir).resolve().parent != runs:
        raise ValueError(
            f"--output_dir {output_dir} would move only part of a run's outputs: every run writes to "
            f"<output_root>/runs/<run name>/ and MLflow to <output_root>/mlflow.db. "
            f"Pass --output_root {output_dir} instead (and --run_name NAME to name the run)"
        )


def make_run_dir(run_dir: str | Path, resume: bool = False) -> str:
    """The run folder (with ``models/``), created for a new run, reused only with ``resume``.

    Args:
        run_dir: ``<output_root>/runs/<run name>``.
        resume: continue an existing run (``--resume true``). Default False.

    Raises:
        FileExistsError: a new run was given the name of an existing run (``--run_name``): the
            message names ``--run_name`` and ``--resume``. Nothing of the existing run is touched.
        FileNotFoundError: ``resume`` is set and there is no such run.
    """
    path = Path(run_dir)
    if not is_rank0():  # rank 0 creates the folder; the other ranks write nothing into it
        return str(path)
    if truthy(resume):
        if not path.is_dir():
            raise FileNotFoundError(
                f"--resume: there is no run {path.name!r} ({path} does not exist); "
                "check --run_name or start a new run without --resume"
            )
    elif str(path.resolve()) not in _RESERVED:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            path.mkdir()
        except FileExistsError:
            raise FileExistsError(
                f"run name {path.name!r} is taken ({path} exists): choose another --run_name for a "
                f"new run, or continue that one with --run_name {path.name} --resume true"
            ) from None
        _RESERVED.add(str(path.resolve()))
    (path / "models").mkdir(parents=True, exist_ok=True)
    return str(path)


def latest_checkpoint(output_root: str | Path, filename: str = "model.pt") -> str:
    """``models/<filename>`` of the most recently trained run under ``<output_root>/runs``.

    The choice is logged with the run's name and when its file was written, so that evaluating or
    inferring without ``--ckpt_path`` never silently takes another run than the user thinks.

    Raises:
        FileNotFoundError: no run holds that file; train first or pass ``--ckpt_path``.
    """
    candidates = list(Path(output_root).glob(f"runs/*/models/{filename}"))
    if not candidates:
        raise FileNotFoundError(
            f"No trained model ({filename}) under {Path(output_root) / 'runs'}. Train first "
            "(python -m monai.bundle run training --config_file bundle/configs/train.json) "
            "or pass --ckpt_path /path/to/model.pt"
        )
    newest = max(candidates, key=lambda p: p.stat().st_mtime)
    written = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(newest.stat().st_mtime))
    logger.info(
        "No --ckpt_path given: using %s of run %s, the newest of %d runs (trained %s)",
        newest,
        newest.parent.parent.name,
        len(candidates),
        written,
    )
    return str(newest)


def evaluation_dir(ckpt_path: str | Path, output_root: str | Path) -> str:
    """``<run_dir>/evaluation`` for a run folder's checkpoint, else ``<output_root>/evaluations/<time>``."""
    ckpt = Path(ckpt_path).resolve()
    if ckpt.parent.name == "models" and (ckpt.parent.parent / "mlflow_run.json").is_file():
        return str(ckpt.parent.parent / "evaluation")
    return str(Path(output_root) / "evaluations" / time.strftime("%Y%m%d-%H%M%S"))


def cached_dataset(
    data: list, transform: Any, num_workers: int | None = None, copy_cache: bool = True
) -> Any:
    """MONAI CacheDataset of ``data``, filled with one torch thread per worker thread.

    The deterministic transforms are many small tensor operations; with several torch threads
    each costs milliseconds of thread hand-off (measured 13-35x slower to fill on 2 cores), so
    the cache is filled by ``num_workers`` Python threads running single-threaded torch.

    Args:
        data: the datalist.
        transform: the full transform chain (cached up to its first random transform).
        num_workers: filling threads. Default None: one per core.
        copy_cache: deep-copy a cached item before the random transforms run on it (MONAI's
            guard against a transform that modifies its input in place, which would corrupt
            the cache). Default True. train.json passes False: its augmentations
            (``transforms.FusedAugmentation`` over MONAI's RandZoomd/RandRotated/RandFlipd)
            return new tensors, and the copy cost 0.2 ms per slice. Set it back to True when
            adding a transform that writes into its input.
    """
    import torch
    from monai.data import CacheDataset

    threads = torch.get_num_threads()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    workers = num_workers or cores
    torch.set_num_threads(1)
    try:
        return CacheDataset(
            data=data,
            transform=transform,
            cache_rate=1.0,
            num_workers=workers,
            progress=False,
            copy_cache=copy_cache,
        )
    finally:
        torch.set_num_threads(threads)
