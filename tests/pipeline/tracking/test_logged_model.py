"""The MLflow Model of a run, read back through MLflow's client on a SQLite store: linked to the run
and the validation metrics of its epoch, with a signature and an input example, loaded as models
from code with pickle deserialization disabled, and predicting what the network itself predicts.

The weights are a seeded tiny U-Net whose head bias is set so that about a fifth of the pixels are
lesion: masks that are neither empty nor full, so a comparison of masks means something.
"""

from __future__ import annotations

import json
import sysconfig
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from mlflow.entities import Metric

from networks import UNet
from pipeline.tracking.logged_model import download_model, input_example, log_model, model_config
from tests.support import CONFIGS, run_isolated

SETTINGS = {"channels_in": 3, "n_classes": 1, "depth": 3, "n_filters": 2, "dropout": 0.6}


def _training_config(**overrides) -> dict:
    config = json.loads((CONFIGS / "train.json").read_text())
    config["network_def"].update(n_filters=2, depth=3)
    config.update({"image_size": 64, **overrides})
    return config


def _slices(n: int = 5) -> torch.Tensor:
    """Smooth [0, 1] images (blurred noise), as prepared slices look, not white noise."""
    noise = torch.rand(n, 3, 16, 16, generator=torch.Generator().manual_seed(7))
    return torch.nn.functional.interpolate(noise, size=(64, 64), mode="bilinear", align_corners=False)


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    network = UNet(**SETTINGS).eval()
    with torch.no_grad():
        network.head.bias -= torch.quantile(network(_slices()).flatten(), 0.8)
    path = tmp_path_factory.mktemp("weights") / "model.pt"
    torch.save(network.state_dict(), path)
    return path


@pytest.fixture(scope="module")
def logged(mlflow_client, weights, tmp_path_factory):
    """A run with three validated epochs (the best is epoch 2) and its model of epoch 2."""
    location = tmp_path_factory.mktemp("artifacts").as_uri()
    experiment = mlflow_client.create_experiment("logged-model", artifact_location=location)
    run_id = mlflow_client.create_run(experiment, run_name="unet-test").info.run_id
    values = []
    for epoch, dice, best in ((1, 0.5, 0.5), (2, 0.8, 0.8), (3, 0.7, 0.8)):
        values += [Metric("val_volume_dice", dice, 1000 + epoch, epoch)]
        values += [Metric("best_val_volume_dice", best, 1000 + epoch, epoch)]
        values += [Metric("train_loss", 1 / epoch, 1000 + epoch, epoch)]
    values += [Metric("train_loss_iter", 0.3, 1002, 2), Metric("eval_threshold_dice_mean", 0.75, 2000, 0)]
    mlflow_client.log_batch(run_id, metrics=values)
    model = log_model(mlflow_client, run_id, weights, _training_config(), step=2)
    return run_id, model


def test_model_config_holds_what_rebuilds_the_network():
    config = model_config(_training_config(image_size="@size", size=96))
    expected = {"_target_": "networks.UNet", **SETTINGS, "init": "he"}
    assert config == {
        "network": expected,
        "image_size": 96,
        "threshold": 0.5,
        "batch_size": 8,
        "device": None,
    }
    with pytest.raises(ValueError, match="threshold must be in"):
        model_config(_training_config(), threshold=1.0)


def test_the_model_is_linked_to_its_run_and_the_metrics_of_its_epoch(mlflow_client, logged):
    run_id, model = logged
    found = mlflow_client.get_logged_model(model.model_id)
    assert found.status.to_int() == mlflow.entities.LoggedModelStatus.READY.to_int()
    assert found.source_run_id == run_id and found.name == "unet"
    assert found.params["network.n_filters"] == "2" and found.params["image_size"] == "64"
    linked = {m.key: (m.value, m.step) for m in found.metrics}
    # validation metrics of epoch 2 and the evaluation; not the training loss, not epoch 3's
    assert linked == {
        "val_volume_dice": (0.8, 2),
        "best_val_volume_dice": (0.8, 2),
        "eval_threshold_dice_mean": (0.75, 0),
    }
    run = mlflow_client.get_run(run_id)
    assert [(o.model_id, o.step) for o in run.outputs.model_outputs] == [(model.model_id, 2)]
    # linking logs no second value into the run's history
    assert len(mlflow_client.get_metric_history(run_id, "val_volume_dice")) == 3


def test_signature_input_example_and_no_pickle(mlflow_client, logged, tmp_path):
    _, model = logged
    folder = download_model(mlflow_client, model.model_id, tmp_path)
    info = mlflow.models.Model.load(str(folder))
    assert info.model_id == model.model_id
    inputs, outputs = info.signature.inputs.inputs, info.signature.outputs.inputs
    assert [(i.name, i.type, i.shape) for i in inputs] == [(None, np.dtype(np.float32), (-1, 3, -1, -1))]
    assert [(o.name, o.type, o.shape) for o in outputs] == [
        ("probabilities", np.dtype(np.float32), (-1, 1, -1, -1)),
        ("mask", np.dtype(np.uint8), (-1, 1, -1, -1)),
    ]
    example = info.load_input_example(str(folder))
    np.testing.assert_array_equal(example, input_example(64))
    assert example.shape == (1, 3, 64, 64) and 0 <= example.min() and example.max() <= 1
    pyfunc = info.flavors["python_function"]
    assert pyfunc["model_code_path"].endswith("pyfunc_model.py") and "python_model" not in pyfunc
    assert pyfunc["config"]["network"]["n_filters"] == 2 and pyfunc["config"]["threshold"] == 0.5
    assert not [p for p in folder.rglob("*") if p.suffix in (".pkl", ".pickle", ".cloudpickle")]
    assert (folder / "code" / "networks" / "unet.py").is_file()
    state = torch.load(folder / "artifacts" / "model.pt", weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    assert json.loads((folder / "artifacts" / "config.json").read_text())["image_size"] == 64


def test_the_model_loads_without_pickle_and_predicts_as_the_network(
    mlflow_client, logged, weights, monkeypatch
):
    _, model = logged
    monkeypatch.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "false")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_client.tracking_uri)
    assert mlflow.get_tracking_uri() == mlflow_client.tracking_uri, (
        "MLflow's global tracking URI was set elsewhere"
    )
    loaded = mlflow.pyfunc.load_model(f"models:/{model.model_id}")
    network = UNet(**SETTINGS)
    network.load_state_dict(torch.load(weights, weights_only=True))
    x = _slices(11)  # two chunks of 8 and 3
    with torch.no_grad():
        expected = torch.sigmoid(network.eval()(x)).numpy()
    out = loaded.predict(x.numpy())
    assert out["probabilities"].dtype == np.float32 and out["mask"].dtype == np.uint8
    assert out["probabilities"].shape == out["mask"].shape == (11, 1, 64, 64)
    np.testing.assert_allclose(out["probabilities"], expected, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(out["mask"], (expected > 0.5).astype(np.uint8))
    assert 0.05 < out["mask"].mean() < 0.5
    with pytest.raises(Exception, match="shape"):
        loaded.predict(np.zeros((2, 1, 64, 64), dtype=np.float32))
    # the model config is overridden at load time
    threshold = float(np.quantile(expected, 0.95))  # above 0.5: the top 5 % of the pixels
    stricter = mlflow.pyfunc.load_model(
        f"models:/{model.model_id}", model_config={"threshold": threshold, "device": "cpu"}
    )
    strict_mask = stricter.predict(x.numpy())["mask"]
    np.testing.assert_array_equal(strict_mask, (expected > threshold).astype(np.uint8))
    assert 0 < strict_mask.sum() < out["mask"].sum()


ISOLATED = """
import json, sys
sys.path.append({site!r})
import mlflow
model = mlflow.pyfunc.load_model({folder!r})
import numpy as np
out = model.predict(np.zeros((2, 3, 64, 64), dtype=np.float32))
print(json.dumps({{"networks": sys.modules["networks"].__file__, "shape": list(out["mask"].shape)}}))
"""


@pytest.mark.slow
def test_the_model_loads_without_this_repository(mlflow_client, logged, tmp_path):
    """In a Python that cannot import the repository: the network's code comes with the model."""
    _, model = logged
    folder = str(download_model(mlflow_client, model.model_id, tmp_path))
    code = ISOLATED.format(site=sysconfig.get_paths()["purelib"], folder=folder)
    result = run_isolated(code, tmp_path, MLFLOW_ALLOW_PICKLE_DESERIALIZATION="false")
    assert result.returncode == 0, result.stderr[-3000:]
    found = json.loads(result.stdout.strip().splitlines()[-1])
    assert found["networks"].startswith(str(folder)) and found["shape"] == [2, 1, 64, 64]
