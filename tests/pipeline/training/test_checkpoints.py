"""The checkpoint savers on MONAI's CheckpointSaver: atomic files, and a best that survives a resume."""

from __future__ import annotations

import torch
from ignite.engine import Engine

from pipeline.training.checkpoints import BestModelSaver


def _validation(saver: BestModelSaver, value: float, epoch: int) -> Engine:
    """What MONAI's evaluator does at the end of a validation: metrics, then best_metric, then handlers."""
    engine = saver._engine
    engine.state.epoch = epoch
    engine.state.metrics = {"val_volume_dice": value}
    if value > engine.state.best_metric:
        engine.state.best_metric, engine.state.best_metric_epoch = value, epoch
    saver.metrics_completed(engine)
    return engine


def _evaluator() -> Engine:
    engine = Engine(lambda e, b: None)
    engine.state.best_metric, engine.state.best_metric_epoch = -1.0, -1  # MONAI's starting values
    return engine


def test_model_pt_is_a_plain_state_dict_written_only_on_improvement(tmp_path):
    network = torch.nn.Linear(2, 1)
    saver = BestModelSaver(str(tmp_path), network)
    saver.attach(_evaluator())
    _validation(saver, 0.5, epoch=1)
    first = torch.load(tmp_path / "model.pt", weights_only=True)
    assert set(first) == {"weight", "bias"}  # plain state_dict, no wrapper keys
    with torch.no_grad():
        network.weight.fill_(7.0)
    _validation(saver, 0.4, epoch=2)  # worse: model.pt keeps epoch 1's weights
    assert torch.equal(torch.load(tmp_path / "model.pt", weights_only=True)["weight"], first["weight"])
    _validation(saver, 0.9, epoch=3)
    assert torch.load(tmp_path / "model.pt", weights_only=True)["weight"].eq(7.0).all()
    assert not [p for p in tmp_path.iterdir() if p.name != "model.pt"]  # no temporary file left


def test_a_resumed_saver_keeps_the_best_and_ignores_worse_epochs(tmp_path):
    network = torch.nn.Linear(2, 1)
    saver = BestModelSaver(str(tmp_path), network)
    saver.attach(_evaluator())
    _validation(saver, 0.8, epoch=1)
    state = saver.state_dict()
    assert (state["best"], state["best_epoch"]) == (0.8, 1)
    # the state travels inside a weights-only epoch checkpoint
    torch.save({"best_model": state}, tmp_path / "checkpoint.pt")
    restored = torch.load(tmp_path / "checkpoint.pt", weights_only=True)["best_model"]

    best_weights = torch.load(tmp_path / "model.pt", weights_only=True)["weight"].clone()
    with torch.no_grad():
        network.weight.fill_(-3.0)
    resumed = BestModelSaver(str(tmp_path), network)  # a new process: fresh evaluator and saver
    resumed.attach(_evaluator())
    resumed.load_state_dict(restored)
    assert (resumed.best, resumed.best_epoch) == (0.8, 1)
    _validation(resumed, 0.6, epoch=2)  # later and worse: without the restored record it would save
    assert torch.equal(torch.load(tmp_path / "model.pt", weights_only=True)["weight"], best_weights)
    assert (resumed.best, resumed.best_epoch) == (0.8, 1)


def test_weights_are_read_weights_only_from_model_pt_and_training_checkpoints(tmp_path):
    import os
    import subprocess
    import sys

    import pytest

    from pipeline.training.checkpoints import load_weights
    from pipeline.training.weights import read_weights

    network = torch.nn.Linear(2, 1)
    torch.save(network.state_dict(), tmp_path / "model.pt")
    torch.save({"network": network.state_dict(), "trainer": {"epoch": 3}}, tmp_path / "checkpoint_epoch=3.pt")
    for name in ("model.pt", "checkpoint_epoch=3.pt"):
        state = read_weights(tmp_path / name)
        assert set(state) == {"weight", "bias"} and torch.equal(state["weight"], network.weight.detach())
    # a pickled object other than tensors is refused before it runs: the marker file is not made
    marker = tmp_path / "ran"
    code = (
        "import os, torch\n"
        "class Evil:\n"
        f"    def __reduce__(self): return (os.system, ('touch {marker}',))\n"
        f"torch.save({{'weight': Evil()}}, {str(tmp_path / 'evil.pt')!r})\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, env=dict(os.environ))
    with pytest.raises(ValueError, match="cannot be loaded weights-only"):
        read_weights(tmp_path / "evil.pt")
    assert not marker.exists()
    with pytest.raises(FileNotFoundError, match="pass --ckpt_path"):
        read_weights(tmp_path / "missing.pt")
    # another network: the shapes named, and the hint (or the default one) as the fix
    with pytest.raises(ValueError, match=r"weight \(1, 2\) vs \(3, 2\).*Use the run's settings\.$"):
        load_weights(torch.nn.Linear(2, 3), tmp_path / "model.pt", hint="Use the run's settings.")
    with pytest.raises(ValueError) as other:
        load_weights(torch.nn.Sequential(torch.nn.Linear(2, 1)), tmp_path / "model.pt")
    message = str(other.value)
    assert "missing keys: ['0.bias', '0.weight']; unexpected keys: ['bias', 'weight']" in message
    assert message.endswith("pass the same --network_def#... overrides as for training.")


def test_the_unet_settings_are_read_from_its_weights():
    from networks import UNet
    from pipeline.training.weights import unet_settings_of

    for settings in (
        {"channels_in": 3, "n_classes": 1, "depth": 5, "n_filters": 3},
        {"channels_in": 1, "n_classes": 2, "depth": 2, "n_filters": 0},
    ):
        assert unet_settings_of(UNet(**settings).state_dict()) == settings
    assert unet_settings_of(torch.nn.Linear(2, 1).state_dict()) is None
