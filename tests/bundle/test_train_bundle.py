"""The bundle smoke test: train.json through MONAI's ConfigWorkflow on a few phantom patients.

initialize -> check_properties() == [] -> run -> finalize, then everything the run should have
left behind is read back: checkpoints from disk, and the MLflow run through MLflow's client.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from tests.support import bundle_workflow, one_cycle_lr, run_bundle


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("bundle")
    settings = {"loss#lambda_dice": 0.5, "mlflow_tracking#system_metrics_interval": 0.5}
    workflow = run_bundle(tmp_path, **settings)
    return tmp_path, workflow


@pytest.mark.slow
def test_checkpoints_are_written(trained):
    tmp_path, workflow = trained
    ckpt_dir = Path(workflow.parser.get_parsed_content("ckpt_dir"))
    assert ckpt_dir.parent.parent == tmp_path / "outputs" / "runs"
    # model.pt: a plain state_dict that loads into the network definition
    state = torch.load(ckpt_dir / "model.pt", weights_only=True)
    network = workflow.parser.get_parsed_content("network_def", instantiate=True)
    network.load_state_dict(state)
    final = torch.load(ckpt_dir / "final.pt", weights_only=True)
    assert set(final) >= {"network", "optimizer", "lr_scheduler", "trainer"}
    assert final["trainer"]["iteration"] == 2 * final["trainer"]["epoch_length"]  # ignite's state: 2 epochs
    epochs = sorted(p.name for p in ckpt_dir.glob("checkpoint_epoch=*.pt"))
    assert epochs == ["checkpoint_epoch=1.pt", "checkpoint_epoch=2.pt"]
    assert not list(ckpt_dir.glob("*.tmp"))


@pytest.mark.slow
def test_phantom_generated_in_the_default_folder_and_split_written(trained):
    tmp_path, workflow = trained
    phantom = tmp_path / "outputs" / "phantom_lgg"
    assert len([p for p in phantom.iterdir() if p.is_dir()]) == 4
    split_file = Path(workflow.parser.get_parsed_content("split_file"))
    split = json.loads(split_file.read_text())
    assert len(split["val"]) == 1 and len(split["train"]) == 3
    assert not set(split["val"]) & set(split["train"])


@pytest.mark.slow
def test_mlflow_run_holds_params_metrics_and_artifacts(trained):
    from mlflow import MlflowClient

    tmp_path, workflow = trained
    uri = f"sqlite:///{(tmp_path / 'outputs' / 'mlflow.db').resolve()}"
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("lgg-segmentation")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.info.run_name.startswith("unet-f2-s64-e2-")
    params = run.data.params
    assert params["learning_rate"] == "0.1" and params["batch_size"] == "4" and params["epochs"] == "2"
    assert params["network.n_filters"] == "2" and params["augment.rotate_degrees"] == "15"
    # what was trained, from the resolved config: `--loss#lambda_dice 0.5` trains and logs 0.5
    assert params["loss.name"] == "DiceCELoss" and params["loss.lambda_dice"] == "0.5"
    assert params["optimizer"] == "torch.optim.SGD" and params["lr_scheduler"].endswith("OneCycleLR")
    assert len(params["dataset_fingerprint"]) >= 8
    assert "git_commit" in run.data.tags

    n_train = int(params["train_slices"])
    iterations = 2 * math.ceil(n_train / 4)
    losses = client.get_metric_history(run.info.run_id, "train_loss_iter")
    assert sorted(m.step for m in losses) == list(range(1, iterations + 1))
    # the one-cycle schedule steps every iteration: logged lr after iteration i is the formula's
    lrs = sorted(client.get_metric_history(run.info.run_id, "lr"), key=lambda m: m.step)
    for metric in lrs:
        assert math.isclose(metric.value, one_cycle_lr(metric.step, iterations, 0.1), rel_tol=1e-6)
    for name in ("val_volume_dice", "val_dice", "val_bce", "val_dice_loss", "train_loss"):
        history = client.get_metric_history(run.info.run_id, name)
        assert sorted(m.step for m in history) == [1, 2], name
        assert all(math.isfinite(m.value) for m in history)

    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    artifacts |= {a.path for a in client.list_artifacts(run.info.run_id, "models")}
    assert "models/model.pt" in artifacts
    assert any(a.endswith(".json") and a.startswith(Path(params["split_file"]).stem) for a in artifacts)
    # a workflow built in Python: the merged config read from its parser (test_what_users_see
    # checks the command-line path)
    assert "config.json" in artifacts
    config = json.loads((Path(workflow.parser.get_parsed_content("run_dir")) / "config.json").read_text())
    assert config["network_def"]["n_filters"] == 2 and config["epochs"] == 2
    # the dataset inputs: one per context, the fingerprint as digest, the counts in the profile
    inputs = {i.tags[0].value: i.dataset for i in run.inputs.dataset_inputs}
    assert set(inputs) == {"training", "validation"}
    split = json.loads(Path(params["split_file"]).read_text())
    for context, key in (("training", "train"), ("validation", "val")):
        assert inputs[context].digest == params["dataset_fingerprint"][:36]
        assert inputs[context].name == Path(params["dataset_dir"]).name + "-" + key
        profile = json.loads(inputs[context].profile)
        assert profile["patients"] == len(split[key]) and profile["split_file"] == params["split_file"]
    assert json.loads(inputs["training"].profile)["slices"] == n_train
    # MLflow's system metrics, sampled every 0.5 s here
    assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= set(
        run.data.metrics
    )
    # MONAI's MLFlowHandler logs the trainer's max_epochs and epoch_length
    assert params["max_epochs"] == "2" and int(params["epoch_length"]) == math.ceil(n_train / 4)


@pytest.mark.slow
def test_the_best_model_is_the_runs_mlflow_model(trained, monkeypatch):
    """model.pt as a pyfunc logged model: an output of the run at the best epoch (read from the
    checkpoint, not from MLflow), with that epoch's validation metrics, loading with pickle
    deserialization disabled and predicting what the network loaded from model.pt predicts."""
    import mlflow

    tmp_path, workflow = trained
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{(tmp_path / 'outputs' / 'mlflow.db').resolve()}")
    run_id = json.loads(
        (Path(workflow.parser.get_parsed_content("run_dir")) / "mlflow_run.json").read_text()
    )["run_id"]
    run = client.get_run(run_id)
    ckpt_dir = Path(workflow.parser.get_parsed_content("ckpt_dir"))
    best = torch.load(ckpt_dir / "final.pt", weights_only=True)["best_model"]
    assert [o.step for o in run.outputs.model_outputs] == [best["best_epoch"]]
    model = client.get_logged_model(run.outputs.model_outputs[0].model_id)
    assert model.source_run_id == run_id and model.status.to_int() == 2  # READY
    assert model.params["network.n_filters"] == "2" and model.params["image_size"] == "64"
    linked = {m.key: (m.value, m.step) for m in model.metrics}
    assert linked["val_volume_dice"] == pytest.approx((best["best"], best["best_epoch"]))
    assert linked["best_val_volume_dice"] == pytest.approx((best["best"], best["best_epoch"]))
    assert not [key for key in linked if not key.startswith("val_") and not key.startswith("best_val_")]

    monkeypatch.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "false")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", client.tracking_uri)
    assert mlflow.get_tracking_uri() == client.tracking_uri, "MLflow's global tracking URI was set elsewhere"
    loaded = mlflow.pyfunc.load_model(f"models:/{model.model_id}")
    network = workflow.parser.get_parsed_content("network_def", instantiate=True)
    network.load_state_dict(torch.load(ckpt_dir / "model.pt", weights_only=True))
    dataset = workflow.parser.get_parsed_content("validate#dataset")
    x = torch.stack([torch.as_tensor(dataset[i]["image"]) for i in range(min(8, len(dataset)))]).float()
    with torch.no_grad():
        expected = torch.sigmoid(network.eval()(x)).numpy()
    out = loaded.predict(x.numpy())
    assert out["probabilities"].shape == (len(x), 1, 64, 64)
    assert abs(out["probabilities"] - expected).max() < 1e-6
    assert (out["mask"] == (expected > 0.5)).all()


@pytest.mark.slow
def test_epoch_metrics_reach_mlflow_before_the_epoch_checkpoint(trained):
    """A kill between the two must not lose an epoch's metrics: a resume starts after the newest
    checkpoint, so what that checkpoint covers has to be logged already (a redone epoch is only
    logged twice, and readers take the last value)."""
    from ignite.engine import Events

    _, workflow = trained
    trainer = workflow.parser.get_parsed_content("train#trainer")
    owners = [
        type(getattr(h, "__self__", h)).__name__ for h, *_ in trainer._event_handlers[Events.EPOCH_COMPLETED]
    ]
    assert "MLflowTracking" in owners and "RunCheckpoints" in owners
    assert owners.index("MLflowTracking") < owners.index("RunCheckpoints"), owners


@pytest.mark.slow
def test_the_last_epoch_is_validated_whatever_val_interval(tmp_path):
    """--epochs 1 with val_interval 2 (the demo's): MONAI's ValidationHandler alone never validates."""
    from mlflow import MlflowClient

    workflow = run_bundle(tmp_path, epochs=1, val_interval=2, system_metrics=False)
    ckpt_dir = Path(workflow.parser.get_parsed_content("ckpt_dir"))
    assert (ckpt_dir / "model.pt").is_file()
    record = json.loads((Path(workflow.parser.get_parsed_content("run_dir")) / "mlflow_run.json").read_text())
    client = MlflowClient(tracking_uri=record["tracking_uri"])
    history = client.get_metric_history(record["run_id"], "val_volume_dice")
    assert [m.step for m in history] == [1]
    best = client.get_metric_history(record["run_id"], "best_val_volume_dice")
    assert [m.value for m in best] == [history[0].value]
    # `system_metrics false` turns MLflow's system metrics off
    metrics = client.get_run(record["run_id"]).data.metrics
    assert "val_volume_dice" in metrics and not [k for k in metrics if k.startswith("system/")]


@pytest.mark.slow
def test_a_workflow_built_in_python_records_its_config_only_when_handed_it(tmp_path, caplog):
    """No command line to rebuild the merged config from: without record_workflow_config the run
    says how to record it and writes no config.json (run_bundle, which calls it, writes one)."""
    import logging

    workflow = bundle_workflow(tmp_path, epochs=1, system_metrics=False)
    workflow.initialize()
    with caplog.at_level(logging.WARNING):
        workflow.run()
    workflow.finalize()
    run_dir = Path(workflow.parser.get_parsed_content("run_dir"))
    assert (run_dir / "models" / "model.pt").is_file() and not (run_dir / "config.json").exists()
    assert any("record_workflow_config(workflow)" in r.getMessage() for r in caplog.records)
