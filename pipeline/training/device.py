"""GPU options of ``train.json`` that cost nothing on the CPU: each is off by default there.

``train.json`` keys (command line: ``--<key> <value>``):

- ``amp`` (default false) and ``amp_dtype`` (default ``$torch.bfloat16``): automatic mixed
  precision. MONAI 1.6.1's engines take ``amp`` and ``amp_kwargs`` but autocast with a fixed
  ``torch.autocast("cuda", ...)`` and a ``torch.cuda.amp.GradScaler``; on a CPU both disable
  themselves with a warning, so the config hands MONAI ``amp`` only on CUDA (GradScaler, and the
  autocast around forward and loss there) and wraps the inferer in :class:`AutocastInferer`,
  which autocasts on the device of the batch, CPU included. Its output is cast back to float32,
  so the loss, the post-processing and the metrics see float32 logits.
- ``channels_last`` (default false): :func:`place_network` converts the network's 4-D weights to
  ``torch.channels_last`` (before DDP wraps it in ``multi_gpu_train.json``) and
  :func:`batch_to_kwargs` hands ``memory_format=torch.channels_last`` to MONAI's ``to_kwargs``,
  which ``PrepareBatchDefault``/``default_prepare_batch`` pass to ``Tensor.to`` together with
  ``device`` and ``non_blocking``: image and label arrive on the device in channels-last layout,
  with the default prepare-batch semantics otherwise unchanged (no prepare_batch of our own).
- ``non_blocking`` (default ``$torch.cuda.is_available()``): MONAI's ``non_blocking`` of the
  trainer and the evaluator, the host-to-GPU copies of pinned batches run asynchronously.
- ``augment_on_device`` (default false): :func:`to_device_transforms` appends MONAI's
  ``ToDeviced`` to the cached (deterministic) training transforms, so every cached slice is
  moved to the device once, and :func:`train_loader` builds a ``ThreadDataLoader`` with
  ``num_workers=0`` and no pinning: the random augmentations run on the device in a thread of the
  main process (MONAI's fast-training guide). The cache then lives in device memory, about 1 MB
  per training slice at 256 px. With the option off the training loader is the same MONAI
  ``DataLoader`` with the configured workers and pinning as before.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import torch
from monai.inferers import Inferer, SimpleInferer

logger = logging.getLogger(__name__)


class AutocastInferer(Inferer):
    """Run another inferer under ``torch.autocast`` on the device of the input, output in float32.

    Args:
        inferer: the inferer to wrap. Default a ``SimpleInferer``.
        dtype: the lower-precision type of autocast. Default ``torch.bfloat16`` (the CPU's
            autocast supports bfloat16; float16 needs CUDA and, for training, MONAI's GradScaler).
    """

    def __init__(self, inferer: Inferer | None = None, dtype: torch.dtype = torch.bfloat16) -> None:
        super().__init__()
        self.inferer = SimpleInferer() if inferer is None else inferer
        self.dtype = dtype

    def __call__(self, inputs: torch.Tensor, network: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        with torch.autocast(device_type=inputs.device.type, dtype=self.dtype):
            outputs = self.inferer(inputs, network, *args, **kwargs)
        if isinstance(outputs, torch.Tensor) and outputs.is_floating_point():
            return outputs.float()
        return outputs


def autocast_inferer(inferer: Inferer, enabled: bool, dtype: torch.dtype = torch.bfloat16) -> Inferer:
    """``inferer`` itself when ``enabled`` is false, else an :class:`AutocastInferer` around it."""
    return AutocastInferer(inferer, dtype) if enabled else inferer


def engine_amp(amp: bool, device: torch.device | str) -> bool:
    """MONAI's ``amp`` flag: ``amp`` on a CUDA device, False elsewhere.

    MONAI 1.6.1 autocasts with ``torch.autocast("cuda")`` and scales with
    ``torch.cuda.amp.GradScaler``; on other devices both only warn and disable themselves, and
    :class:`AutocastInferer` does the autocast.
    """
    return bool(amp) and torch.device(device).type == "cuda"


def place_network(network: torch.nn.Module, device: torch.device | str, channels_last: bool = False):
    """``network.to(device)``; with ``channels_last`` its 4-D weights also in channels-last layout."""
    if channels_last:
        return network.to(device=device, memory_format=torch.channels_last)
    return network.to(device)


def batch_to_kwargs(channels_last: bool = False) -> dict[str, Any]:
    """MONAI's ``to_kwargs`` (extra ``Tensor.to`` arguments of prepare_batch): empty, or channels-last."""
    return {"memory_format": torch.channels_last} if channels_last else {}


def to_device_transforms(keys: Sequence[str], device: torch.device | str, enabled: bool) -> list:
    """``[ToDeviced(keys, device)]`` when ``enabled``, else ``[]``: the end of the cached transforms."""
    if not enabled:
        return []
    from monai.transforms import ToDeviced

    return [ToDeviced(keys=list(keys), device=device)]


def train_loader(on_device: bool = False, **kwargs: Any):
    """The training loader: MONAI's ``DataLoader(**kwargs)``, or a ``ThreadDataLoader`` with ``on_device``.

    With ``on_device`` the dataset's cached items are already on the device (see
    :func:`to_device_transforms`), so ``num_workers`` is set to 0 (CUDA tensors cannot go through
    worker processes) and ``pin_memory``/``persistent_workers`` to False (only CPU tensors can be
    pinned); the augmentations run in the ThreadDataLoader's thread, one batch ahead.

    Args:
        on_device: the ``augment_on_device`` option.
        kwargs: ``DataLoader`` arguments (``dataset``, ``sampler``, ``batch_size``, ...).
    """
    from monai.data import DataLoader, ThreadDataLoader

    if not on_device:
        return DataLoader(**kwargs)
    ignored = {k: kwargs[k] for k in ("num_workers", "pin_memory", "persistent_workers") if kwargs.get(k)}
    if ignored:
        logger.info("augment_on_device: ThreadDataLoader in the main process, ignoring %s", ignored)
    kwargs.update(num_workers=0, pin_memory=False, persistent_workers=False)
    return ThreadDataLoader(**kwargs)
