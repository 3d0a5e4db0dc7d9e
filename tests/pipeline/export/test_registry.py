"""The model registry: ``export --register NAME --alias ALIAS``, ``export --model models:/NAME@ALIAS``
and ``mlflow models serve`` of the registered version, read back through MLflow's client on a SQLite
store and through a real ``mlflow server``.

The model is the export tests' seeded tiny U-Net (run_dir in conftest.py), whose masks of the
phantom slices are neither empty nor full. What the registry should hold is computed here from the
files (hashlib, torch.load), what the served model should return from the network itself and from
this project's inference (pipeline.inference.workflow.run_inference).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import mlflow
import numpy as np
import pytest
import tifffile
import torch

from networks import UNet
from pipeline import cli
from pipeline.export.layout import MODEL_FILES
from pipeline.export.verify import verify_bundle
from pipeline.inference.preprocessing import image_preprocessing
from pipeline.inference.workflow import find_inputs, run_inference
from tests.pipeline.export.support import IMAGE_SIZE, NETWORK
from tests.support import free_port, wait_until_up

NAME = "lgg-unet"


def _network(run_dir: Path) -> torch.nn.Module:
    network = UNet(**{k: v for k, v in NETWORK.items() if k != "_target_"})
    network.load_state_dict(torch.load(run_dir / "models" / "model.pt", weights_only=True))
    return network.eval()


def _export(run_copy: Path, out: Path, *extra: str) -> int:
    return cli.main(
        ["export", "--checkpoint", str(run_copy / "models" / "model.pt"), "--out", str(out), *extra]
    )


@pytest.fixture(scope="module")
def store(tmp_path_factory, run_dir):
    """A SQLite store holding the training run of run_dir (best epoch 2 of 3) and a copy of run_dir
    that names it in mlflow_run.json; then version 1 registered with alias champion."""
    folder = tmp_path_factory.mktemp("registry")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    client = mlflow.MlflowClient(tracking_uri=uri)
    experiment_id = client.create_experiment("lgg-segmentation", artifact_location=(folder / "art").as_uri())
    run_id = client.create_run(experiment_id, run_name="unet-test").info.run_id
    for epoch, dice, best in ((1, 0.6, 0.6), (2, 0.73, 0.73), (3, 0.71, 0.73)):
        client.log_metric(run_id, "val_volume_dice", dice, step=epoch)
        client.log_metric(run_id, "best_val_volume_dice", best, step=epoch)
    client.set_terminated(run_id)
    run_copy = folder / "run"
    shutil.copytree(run_dir, run_copy)
    (run_copy / "mlflow_run.json").write_text(json.dumps({"run_id": run_id, "tracking_uri": uri}))
    assert _export(run_copy, folder / "v1", "--register", NAME, "--alias", "champion") == 0
    return {"uri": uri, "client": client, "run_id": run_id, "run": run_copy, "folder": folder}


@pytest.mark.slow
def test_register_creates_a_version_of_the_mlflow_model_with_hashes_and_dice(store):
    client, run_id, bundle = store["client"], store["run_id"], store["folder"] / "v1"
    version = client.get_model_version_by_alias(NAME, "champion")
    assert str(version.version) == "1" and version.run_id == run_id and version.status == "READY"
    for name in MODEL_FILES:
        assert version.tags[f"sha256.{name}"] == hashlib.sha256((bundle / name).read_bytes()).hexdigest()
    assert version.tags["best_val_volume_dice"] == "0.73"
    assert version.tags["eval_threshold_dice_mean"] == "0.61"
    # the evaluation's per-volume Dice (summary.json of run_dir: 3 patients, mean 0.61, median 0.7)
    assert "Evaluation per-volume Dice (mean / median over 3 patients): threshold 0.6100 / 0.7000" in (
        version.description
    )
    assert "Best validation per-volume Dice 0.7300" in version.description and run_id in version.description

    # the version is the run's MLflow Model of the bundle's model.pt, at the best epoch
    model = client.get_logged_model(version.tags["logged_model_id"])
    assert version.source == model.artifact_location and model.source_run_id == run_id
    assert model.tags["origin"] == "export"
    assert json.loads(model.tags["mlflow.modelVersions"]) == [{"name": NAME, "version": "1"}]
    outputs = {o.model_id: o.step for o in client.get_run(run_id).outputs.model_outputs}
    assert outputs[model.model_id] == 2
    assert {m.key: (m.value, m.step) for m in model.metrics} == {
        "val_volume_dice": (0.73, 2),
        "best_val_volume_dice": (0.73, 2),
    }
    weights = client.download_artifacts(run_id, "bundle/models/model.pt", str(store["folder"] / "dl"))
    assert hashlib.sha256(Path(weights).read_bytes()).hexdigest() == version.tags["sha256.models/model.pt"]
    logged = {a.path for a in client.list_artifacts(run_id, "bundle/models")}
    assert {"bundle/models/model.ts", "bundle/models/model.onnx", "bundle/models/model.pt"} <= logged


@pytest.mark.slow
def test_an_alias_moves_only_when_asked(store, caplog):
    client, folder = store["client"], store["folder"]
    assert _export(store["run"], folder / "v2", "--register", NAME) == 0
    assert str(client.get_model_version_by_alias(NAME, "champion").version) == "1"
    assert _export(store["run"], folder / "v3", "--register", NAME, "--alias", "champion") == 0
    assert str(client.get_model_version_by_alias(NAME, "champion").version) == "3"
    assert sorted(str(v.version) for v in client.search_model_versions(f"name='{NAME}'")) == ["1", "2", "3"]
    assert {k: str(v) for k, v in client.get_registered_model(NAME).aliases.items()} == {"champion": "3"}
    assert _export(store["run"], folder / "v4", "--alias", "champion") == 1
    assert "--alias champion needs --register NAME" in caplog.text


@pytest.mark.slow
def test_export_again_from_a_registered_version(store, run_dir, tmp_path, caplog):
    out = tmp_path / "again"
    alias = f"models:/{NAME}@champion"
    assert cli.main(["export", "--model", alias, "--out", str(out), "--tracking-uri", store["uri"]]) == 0
    assert verify_bundle(out) == []
    state = torch.load(out / "models" / "model.pt", weights_only=True)
    original = torch.load(run_dir / "models" / "model.pt", weights_only=True)
    assert state.keys() == original.keys() and all(torch.equal(state[k], original[k]) for k in original)
    meta = json.loads((out / "configs" / "metadata.json").read_text())
    champion = str(store["client"].get_model_version_by_alias(NAME, "champion").version)
    assert meta["mlflow"]["registered_model"] == NAME and meta["mlflow"]["model_version"] == champion
    assert (
        meta["mlflow"]["run_id"] == store["run_id"] and meta["eval_metrics"]["best_val_volume_dice"] == 0.73
    )
    assert meta["network_settings"]["n_filters"] == 2 and meta["image_size"] == IMAGE_SIZE

    for wrong, message in (
        (f"models:/{NAME}@nobody", "not found at"),
        (f"models:/{NAME}/99", "not found at"),
        ("runs:/abc/model", "expected models:/NAME@ALIAS"),
    ):
        code = cli.main(
            ["export", "--model", wrong, "--out", str(tmp_path / "x"), "--tracking-uri", store["uri"]]
        )
        assert code == 1 and message in caplog.text and wrong in caplog.text


@pytest.mark.slow
def test_register_and_load_through_a_tracking_server(mlflow_server, run_dir, phantom, tmp_path, monkeypatch):
    """A run folder without a run record: the export gets a run of its own on the server."""
    run_copy = tmp_path / "run"
    shutil.copytree(run_dir, run_copy)
    args = ["--register", NAME, "--alias", "champion", "--tracking-uri", mlflow_server]
    assert _export(run_copy, tmp_path / "bundle", *args) == 0
    client = mlflow.MlflowClient(tracking_uri=mlflow_server)
    version = client.get_model_version_by_alias(NAME, "champion")
    assert client.get_run(version.run_id).info.run_name.startswith("export-")
    expected = hashlib.sha256((tmp_path / "bundle" / "models" / "model.pt").read_bytes()).hexdigest()
    assert version.tags["sha256.models/model.pt"] == expected
    assert "not evaluated" not in version.description  # summary.json of the run folder

    monkeypatch.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "false")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)  # as a user would point MLflow at it
    assert mlflow.get_tracking_uri() == mlflow_server, "MLflow's global tracking URI was set elsewhere"
    loaded = mlflow.pyfunc.load_model(f"models:/{NAME}@champion")
    assert loaded.metadata.model_id == version.tags["logged_model_id"]
    x = _slices(phantom)[:4]
    with torch.no_grad():
        reference = torch.sigmoid(_network(run_dir)(x)).numpy()
    np.testing.assert_allclose(loaded.predict(x.numpy())["probabilities"], reference, rtol=0, atol=1e-6)


def _slices(phantom: Path) -> torch.Tensor:
    """The phantom's slices in the order run_inference reads them, prepared as in training."""
    (patient,) = find_inputs(phantom)
    chain = image_preprocessing(IMAGE_SIZE)
    return torch.stack([chain({"image": str(path)})["image"] for path in patient.slices])


def _stop(server: subprocess.Popen, seconds: float = 30) -> None:
    """Stop ``mlflow models serve`` by its PID, which leads the process group of its uvicorn
    process; return once no process of the group is left (SIGKILL after ``seconds``)."""
    try:
        os.killpg(server.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline + 5:  # a zombie nobody reaps would stay in the group
        server.poll()  # reap the leader
        try:
            os.killpg(server.pid, signal.SIGKILL if time.monotonic() > deadline else 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)


@pytest.mark.slow
def test_the_champion_served_returns_the_masks_of_this_projects_inference(store, run_dir, phantom, tmp_path):
    """``mlflow models serve -m models:/NAME@champion --env-manager local``: the masks of a POST of
    the phantom's prepared slices equal the network's (at the network's size) and, resized back
    as pipeline.inference does (bilinear, then the threshold), the masks run_inference writes."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "serve.log"
    command = [
        str(Path(sys.executable).with_name("mlflow")),
        "models",
        "serve",
        "-m",
        f"models:/{NAME}@champion",
    ]
    command += ["--env-manager", "local", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    env = dict(os.environ, MLFLOW_TRACKING_URI=store["uri"], MLFLOW_ALLOW_PICKLE_DESERIALIZATION="false")
    # as in an activated environment: mlflow runs `uvicorn` from PATH
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    started = time.monotonic()
    with open(log, "w") as handle:
        server = subprocess.Popen(
            command, stdout=handle, stderr=subprocess.STDOUT, cwd=tmp_path, env=env, start_new_session=True
        )
    try:
        wait_until_up(url, server, log, seconds=180, path="/ping", what="mlflow models serve")
        up = time.monotonic() - started
        x = _slices(phantom)
        request = urllib.request.Request(
            url + "/invocations",
            data=json.dumps({"inputs": x.numpy().tolist()}).encode(),
            headers={"Content-Type": "application/json"},
        )
        began = time.monotonic()
        with urllib.request.urlopen(request, timeout=120) as response:
            predictions = json.loads(response.read())["predictions"]
        answered = time.monotonic() - began
    finally:
        _stop(server)
    with pytest.raises(OSError):
        urllib.request.urlopen(url + "/ping", timeout=2)

    probabilities = np.asarray(predictions["probabilities"], dtype=np.float32)
    masks = np.asarray(predictions["mask"], dtype=np.uint8)
    assert probabilities.shape == masks.shape == (len(x), 1, IMAGE_SIZE, IMAGE_SIZE)
    with torch.no_grad():
        reference = torch.sigmoid(_network(run_dir)(x)).numpy()
    np.testing.assert_allclose(probabilities, reference, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(masks, (reference > 0.5).astype(np.uint8))

    ours = tmp_path / "ours"
    run_inference(phantom, _network(run_dir), ours, image_size=IMAGE_SIZE)
    (patient,) = find_inputs(phantom)
    lesion = 0
    for path, probability in zip(patient.slices, probabilities):
        written = tifffile.imread(ours / patient.name / f"{path.stem}_mask.tif") > 0
        resized = torch.nn.functional.interpolate(
            torch.from_numpy(probability[None]), size=written.shape, mode="bilinear", align_corners=False
        )
        np.testing.assert_array_equal(resized[0, 0].numpy() > 0.5, written, err_msg=path.name)
        lesion += int(written.sum())
    total = len(patient.slices) * written.size
    assert 0.02 * total < lesion < 0.5 * total  # masks neither empty nor full: the comparison means something
    print(f"mlflow models serve: up in {up:.1f} s, {len(x)} slices answered in {answered:.2f} s")
