"""Training on several processes, GPUs or machines with torchrun and DistributedDataParallel.

``bundle/configs/multi_gpu_train.json`` (an overlay merged over ``train.json``) calls these:

- ``init_distributed`` joins the process group torchrun set up (nccl with GPUs, gloo without);
  ``cleanup`` leaves it;
- ``local_device`` and ``wrap_ddp`` give every rank its own device and a DDP-wrapped network;
- ``prepare_data_distributed`` prepares the data on rank 0 first, so two processes never
  generate the phantom into the same folder or write the split file at the same time;
- ``draws_per_rank`` splits one epoch's n weighted draws over the ranks, ``shard`` splits the
  validation set, ``from_rank0`` hands rank 0's value (e.g. a time-stamped run folder) to all.

Outside torch.distributed (world of one) every helper behaves as the single-process recipe.
"""

from __future__ import annotations

import datetime
import logging
import math
import os
from collections.abc import Sequence
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from pipeline.data.prepare import PreparedData, prepare_data

logger = logging.getLogger(__name__)

T = TypeVar("T")

TORCHRUN_HINT = (
    "torchrun --nproc_per_node=N -m monai.bundle run training --config_file "
    "\"['bundle/configs/train.json','bundle/configs/multi_gpu_train.json']\""
)
_TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def is_distributed() -> bool:
    """True inside an initialised torch.distributed process group."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """Global rank of this process (0 outside torch.distributed)."""
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    """Number of processes of the job (1 outside torch.distributed)."""
    return dist.get_world_size() if is_distributed() else 1


def local_rank() -> int:
    """Rank of this process on its machine, from torchrun's ``LOCAL_RANK`` (0 when unset)."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def default_backend() -> str:
    """``"nccl"`` when CUDA GPUs are visible, else ``"gloo"`` (CPU)."""
    return "nccl" if torch.cuda.is_available() else "gloo"


def local_device() -> torch.device:
    """This rank's device: ``cuda:<LOCAL_RANK>`` when GPUs are visible, else the CPU.

    Raises:
        ValueError: LOCAL_RANK names a GPU this machine does not have.
    """
    if not torch.cuda.is_available():
        return torch.device("cpu")
    index = local_rank()
    if index >= torch.cuda.device_count():
        raise ValueError(
            f"LOCAL_RANK {index} needs GPU cuda:{index}, but this machine has {torch.cuda.device_count()}: "
            "start at most one process per GPU (torchrun --nproc_per_node=<GPUs per machine>)"
        )
    return torch.device("cuda", index)


def init_distributed(
    backend: str | None = None, timeout_minutes: float = 60.0, quiet_other_ranks: bool = True
) -> None:
    """Join the process group that torchrun describes in the environment (a no-op when joined).

    Args:
        backend: "nccl", "gloo", ...; default None picks nccl with GPUs and gloo without.
        timeout_minutes: how long a collective (e.g. the wait while rank 0 generates the phantom)
            may take before the job fails. Default 60.
        quiet_other_ranks: ranks other than 0 log warnings and errors only, so the progress a
            person reads is rank 0's and is not repeated once per process. Default True.

    Raises:
        RuntimeError: torch has no distributed support, or the process was not started by
            torchrun (its environment variables are missing).
    """
    if is_distributed():
        return
    if not dist.is_available():
        raise RuntimeError("this torch build has no torch.distributed support; install a build with it")
    missing = [name for name in _TORCHRUN_VARIABLES if name not in os.environ]
    if missing:
        raise RuntimeError(
            f"multi_gpu_train.json runs under torchrun, but {', '.join(missing)} are not set. "
            f"Start it with: {TORCHRUN_HINT}; or train in one process with train.json alone."
        )
    backend = backend or default_backend()
    if backend == "nccl":
        torch.cuda.set_device(local_device())
    dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=timeout_minutes))
    if quiet_other_ranks and rank() != 0:
        logging.getLogger().setLevel(logging.WARNING)
    logger.info(
        "torch.distributed: rank %d of %d (local rank %d), backend %s",
        rank(),
        world_size(),
        local_rank(),
        backend,
    )


def cleanup() -> None:
    """Wait for every rank, then leave the process group (a no-op outside torch.distributed).

    ignite's own view of the process group (used by the checkpoint savers) is reset too, so that a
    later run in the same process is a serial one again.
    """
    import ignite.distributed as idist

    if is_distributed():
        dist.barrier()
        idist.finalize()  # destroys the group when ignite has taken it up, and forgets it
        if dist.is_initialized():
            dist.destroy_process_group()


def wrap_ddp(network: torch.nn.Module, device: torch.device | str) -> torch.nn.Module:
    """Move ``network`` to ``device`` and wrap it in DistributedDataParallel.

    DDP copies rank 0's initial weights to every rank and averages the gradients, so the ranks'
    weights stay identical. ``device_ids`` is given for a GPU only (DDP refuses it on the CPU).

    Raises:
        RuntimeError: no process group (call ``init_distributed`` first).
    """
    if not is_distributed():
        raise RuntimeError(
            "DistributedDataParallel needs a process group: run "
            "pipeline.training.distributed.init_distributed() "
            "first (multi_gpu_train.json does it in 'initialize')"
        )
    device = torch.device(device)
    network = network.to(device)
    if device.type == "cuda":
        return DistributedDataParallel(network, device_ids=[device.index], output_device=device.index)
    return DistributedDataParallel(network)


def draws_per_rank(n_draws: int) -> int:
    """Weighted draws of one rank per epoch: the epoch's ``n_draws`` split over the ranks.

    Rounded up, so every rank runs the same number of iterations (DDP needs that) and an epoch
    draws at least ``n_draws`` in total (at most world_size - 1 more).
    """
    if n_draws < 1:
        raise ValueError(f"n_draws must be >= 1, not {n_draws}")
    return math.ceil(n_draws / world_size())


def shard(records: Sequence[T]) -> list[T]:
    """This rank's part of ``records``: every world_size-th item from position ``rank``.

    Each record goes to exactly one rank (no padding, no repeats), as the validation metrics need:
    they gather their per-slice counts from all ranks and refuse a slice counted twice.

    Raises:
        ValueError: fewer records than ranks (a rank would validate nothing).
    """
    if len(records) < world_size():
        raise ValueError(
            f"{len(records)} validation records cannot be split over {world_size()} ranks: "
            "use more validation patients (n_val) or fewer processes"
        )
    return list(records[rank() :: world_size()])


def from_rank0(value: T) -> T:
    """Rank 0's ``value`` on every rank (e.g. a run name with a time stamp); a collective call."""
    if not is_distributed() or world_size() == 1:
        return value
    box = [value if rank() == 0 else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def prepare_data_distributed(
    dataset_dir: str,
    split_file: str,
    phantom_dir: str,
    phantom_patients: int = 110,
    n_val: int | None = None,
    seed: int = 0,
    check: bool = True,
    phantom_hard: bool = False,
    sampling_floor: float = 0.1,
    intensity: str = "slice",
    crop: str = "none",
) -> PreparedData:
    """``pipeline.data.prepare.prepare_data`` on every rank, rank 0 first.

    Three turns, each closed by a barrier: rank 0 (it generates the phantom and writes the split
    file when they are missing), then the first process of each other machine (which finds them
    on a shared file system, or makes the same ones on a local disk: both are deterministic by
    seed), then all the others, which only read. A failure on any rank stops every rank with a
    message naming that rank, instead of leaving the others waiting at the barrier.

    Args: as ``pipeline.data.prepare.prepare_data``.

    Raises:
        DatasetError: (or any error of ``prepare_data``) on the rank where it happened.
        RuntimeError: on the other ranks, naming the rank that failed and its error.
    """
    kwargs = dict(
        dataset_dir=dataset_dir,
        split_file=split_file,
        phantom_dir=phantom_dir,
        phantom_patients=phantom_patients,
        n_val=n_val,
        seed=seed,
        check=check,
        phantom_hard=phantom_hard,
        sampling_floor=sampling_floor,
        intensity=intensity,
        crop=crop,
    )
    if not is_distributed() or world_size() == 1:
        return prepare_data(**kwargs)
    turn = 0 if rank() == 0 else 1 if local_rank() == 0 else 2
    prepared: PreparedData | None = None
    failure: BaseException | None = None
    for current in range(3):
        if turn == current:
            try:
                prepared = prepare_data(**kwargs)
            except Exception as error:  # reported to every rank below, then raised here
                failure = error
        _raise_if_any_failed(failure)
    assert prepared is not None  # every rank had its turn and none failed
    return prepared


def _raise_if_any_failed(failure: BaseException | None) -> None:
    """Barrier that also shares failures: raises on every rank when one rank failed."""
    message = f"{type(failure).__name__}: {failure}" if failure is not None else None
    messages: list[Any] = [None] * world_size()
    dist.all_gather_object(messages, message)
    if failure is not None:
        raise failure
    failed = [(index, text) for index, text in enumerate(messages) if text is not None]
    if failed:
        index, text = failed[0]
        raise RuntimeError(f"data preparation failed on rank {index}, so this rank stops too: {text}")
