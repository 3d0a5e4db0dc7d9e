"""The GPU options of train.json (pipeline/training/device.py), each turned on and trained on the CPU.

Every run is train.json through MONAI's ConfigWorkflow with the tiny overrides of the bundle smoke
test, one epoch on two phantom patients (shared by the runs). Global forward hooks record what
reaches the network and the dtype its convolutions compute in, so each option is checked by its
effect, and the defaults by the absence of it.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest
import torch
from torch import nn

from tests.support import TINY, run_bundle, world_of_one_workflow

SHORT = {"epochs": 1, "phantom_patients": 2}


def _channels_last(x: torch.Tensor) -> bool:
    """Channels-last layout and not also the default one (true for (N, C>1, H, W) tensors)."""
    return x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


class Seen:
    """Global forward hooks: the UNet's inputs and the convolutions' output dtypes, per mode."""

    def __init__(self) -> None:
        self.inputs: list[tuple[bool, torch.dtype, bool, torch.device]] = []
        self.convs: list[tuple[bool, torch.dtype]] = []

    def _pre(self, module: nn.Module, args: tuple) -> None:
        from networks import UNet

        if isinstance(module, UNet):
            x = args[0]
            self.inputs.append((module.training, x.dtype, _channels_last(x), x.device))

    def _post(self, module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        if isinstance(module, nn.Conv2d | nn.ConvTranspose2d):
            self.convs.append((module.training, output.dtype))

    def conv_dtypes(self, training: bool) -> set[torch.dtype]:
        return {dtype for mode, dtype in self.convs if mode == training}

    def input_layouts(self, training: bool) -> set[bool]:
        return {last for mode, _, last, _ in self.inputs if mode == training}


def _train(tmp_path: Path, phantom: str, config_file=None, **overrides):
    """run_bundle with SHORT and the shared phantom, hooks recording; (workflow, Seen)."""
    from torch.nn.modules.module import register_module_forward_hook, register_module_forward_pre_hook

    seen = Seen()
    handles = [register_module_forward_pre_hook(seen._pre), register_module_forward_hook(seen._post)]
    try:
        workflow = run_bundle(tmp_path, phantom_dir=phantom, **{**SHORT, **overrides})
    finally:
        for handle in handles:
            handle.remove()
    trainer = workflow.parser.get_parsed_content("train#trainer")
    assert trainer.state.epoch == 1 and trainer.state.iteration == len(trainer.data_loader)
    assert math.isfinite(trainer.state.output["loss"].item())
    # both engines ran: training and validation forwards were seen
    assert seen.input_layouts(True) and seen.input_layouts(False)
    return workflow, seen


@pytest.fixture(scope="module")
def phantom(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("gpu_options") / "phantom_lgg")


@pytest.mark.slow
def test_defaults_change_nothing_on_the_cpu(tmp_path, phantom):
    from monai.data import DataLoader
    from monai.inferers import SimpleInferer
    from monai.transforms import ToDeviced

    workflow, seen = _train(tmp_path, phantom)
    parse = workflow.parser.get_parsed_content
    trainer, evaluator = parse("train#trainer"), parse("validate#evaluator")
    cuda = torch.cuda.is_available()
    for engine in (trainer, evaluator):
        assert engine.amp is False
        assert engine.non_blocking is cuda
        assert engine.to_kwargs == {}
        assert type(engine.inferer) is SimpleInferer
    assert trainer.scaler is None
    loader = trainer.data_loader
    assert type(loader) is DataLoader
    assert loader.num_workers == TINY["num_workers"] and loader.pin_memory is cuda
    assert not any(isinstance(t, ToDeviced) for t in parse("train#preprocessing").transforms)
    # float32 convolutions, default layout of inputs and weights
    assert seen.conv_dtypes(True) == seen.conv_dtypes(False) == {torch.float32}
    assert seen.input_layouts(True) == seen.input_layouts(False) == {False}
    assert not _channels_last(parse("network").down[0][0].weight)


def test_default_loader_is_the_configured_dataloader_and_on_device_a_thread_loader():
    """The factory alone, with workers and pinning asked for (no worker is started)."""
    from monai.data import DataLoader, ThreadDataLoader

    from pipeline.training.device import train_loader

    data = [{"image": torch.zeros(1)}] * 4
    plain = train_loader(False, dataset=data, batch_size=2, num_workers=2, pin_memory=True)
    assert type(plain) is DataLoader and plain.num_workers == 2 and plain.pin_memory
    threaded = train_loader(True, dataset=data, batch_size=2, num_workers=2, pin_memory=True)
    assert type(threaded) is ThreadDataLoader and threaded.num_workers == 0 and not threaded.pin_memory
    assert len(threaded) == 2


@pytest.mark.slow
def test_amp_runs_the_forward_in_bfloat16(tmp_path, phantom):
    from pipeline.training.device import AutocastInferer

    workflow, seen = _train(tmp_path, phantom, amp=True)
    parse = workflow.parser.get_parsed_content
    assert parse("amp_dtype") is torch.bfloat16
    trainer, evaluator = parse("train#trainer"), parse("validate#evaluator")
    for engine in (trainer, evaluator):
        assert isinstance(engine.inferer, AutocastInferer) and engine.inferer.dtype is torch.bfloat16
        assert engine.amp_kwargs == {"dtype": torch.bfloat16}
        # MONAI's own amp autocasts on "cuda" only: handed to it on CUDA, not on the CPU
        assert engine.amp is torch.cuda.is_available()
    # training and validation convolutions computed in bfloat16; the loss got float32 logits
    assert seen.conv_dtypes(True) == seen.conv_dtypes(False) == {torch.bfloat16}
    assert trainer.state.output["pred"].dtype == torch.float32
    # the inputs stay float32 (autocast casts inside the ops) and the weights float32
    assert {dtype for _, dtype, _, _ in seen.inputs} == {torch.float32}
    assert parse("network").down[0][0].weight.dtype == torch.float32


@pytest.mark.slow
def test_channels_last_network_and_batches(tmp_path, phantom):
    workflow, seen = _train(tmp_path, phantom, channels_last=True)
    parse = workflow.parser.get_parsed_content
    network = parse("network")
    convs = [m for m in network.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]
    assert convs and all(_channels_last(m.weight) for m in convs)  # still so after the SGD steps
    for engine in (parse("train#trainer"), parse("validate#evaluator")):
        assert engine.to_kwargs == {"memory_format": torch.channels_last}
    assert seen.input_layouts(True) == seen.input_layouts(False) == {True}
    assert seen.conv_dtypes(True) == {torch.float32}


@pytest.mark.slow
def test_pin_memory_and_non_blocking_reach_the_loader_and_the_engines(tmp_path, phantom):
    workflow, _ = _train(tmp_path, phantom, pin_memory=True, non_blocking=True)
    parse = workflow.parser.get_parsed_content
    trainer, evaluator = parse("train#trainer"), parse("validate#evaluator")
    assert trainer.non_blocking is True and evaluator.non_blocking is True
    assert trainer.data_loader.pin_memory is True


@pytest.mark.slow
def test_augment_on_device_caches_on_the_device_and_augments_in_this_process(tmp_path, phantom, monkeypatch):
    """Workers asked for (num_workers=1): the option still augments in this process."""
    import threading

    from monai.data import ThreadDataLoader
    from monai.transforms import ToDeviced

    import transforms

    calls = []
    original = transforms.BatchAugmentation.__call__

    def recording(self, items, *args, **kwargs):
        main_thread = threading.current_thread() is threading.main_thread()
        calls.extend((os.getpid(), main_thread, item["image"].device) for item in items)
        return original(self, items, *args, **kwargs)

    monkeypatch.setattr(transforms.BatchAugmentation, "__call__", recording)
    workflow, _ = _train(tmp_path, phantom, augment_on_device=True, num_workers=1)
    parse = workflow.parser.get_parsed_content
    device = parse("device")
    loader = parse("train#trainer").data_loader
    assert type(loader) is ThreadDataLoader and loader.num_workers == 0 and loader.pin_memory is False
    chain = parse("train#preprocessing").transforms
    assert isinstance(chain[-1], ToDeviced) and loader.collate_fn is parse("train#augmentation")
    assert chain[-1].converter.device == device
    dataset = parse("train#dataset")
    assert all(item[key].device == device for item in dataset._cache for key in ("image", "label"))
    # every drawn sample was augmented here, in the ThreadDataLoader's thread, from device tensors
    assert len(calls) == len(loader.sampler)
    assert {(pid, device_) for pid, _, device_ in calls} == {(os.getpid(), device)}
    assert not any(in_main_thread for _, in_main_thread, _ in calls)


@pytest.mark.slow
def test_multi_gpu_overlay_takes_the_options(tmp_path, phantom, monkeypatch):
    """multi_gpu_train.json in a world of one: DDP over a channels-last network, options on."""
    from monai.data import ThreadDataLoader
    from torch.nn.parallel import DistributedDataParallel

    options = {"amp": True, "channels_last": True, "augment_on_device": True}
    workflow = world_of_one_workflow(monkeypatch, tmp_path, phantom_dir=phantom, **SHORT, **options)
    try:
        workflow.initialize()
        assert workflow.check_properties() == []
        workflow.run()
        parse = workflow.parser.get_parsed_content
        network = parse("network")
        assert isinstance(network, DistributedDataParallel)
        assert _channels_last(network.module.down[0][0].weight)
        trainer = parse("train#trainer")
        assert trainer.state.epoch == 1 and type(trainer.data_loader) is ThreadDataLoader
        assert trainer.to_kwargs == {"memory_format": torch.channels_last}
    finally:
        workflow.finalize()
    assert not torch.distributed.is_initialized()
