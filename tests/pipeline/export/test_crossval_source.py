"""``export --crossval`` from the parent MLflow run: the fold runs nested under it, their artifacts
downloaded, ordered by fold; a missing fold is named."""

from __future__ import annotations

import json

import mlflow
import pytest
import torch

from networks import UNet
from pipeline.export.crossval_source import source_from_crossval, source_from_parent_run
from pipeline.export.layout import sha256
from tests.fold_support import NETWORK, ROOT


def _fold_run(client, experiment: str, parent: str, fold: int, folds: int, tmp_path) -> str:
    torch.manual_seed(fold)
    weights = tmp_path / f"upload{fold}" / "model.pt"
    weights.parent.mkdir(parents=True)
    torch.save(UNet(**{k: v for k, v in NETWORK.items() if k != "_target_"}).state_dict(), weights)
    config = json.loads((ROOT / "bundle" / "configs" / "train.json").read_text())
    config.update(network_def=NETWORK, image_size=64, folds=folds, fold=fold)
    (weights.parent / "config.json").write_text(json.dumps(config))
    tags = {"mlflow.parentRunId": parent, "fold": str(fold), "folds": str(folds), "crossval_role": "fold"}
    run = client.create_run(experiment, run_name=f"cvm-fold{fold}", tags=tags).info.run_id
    client.log_artifact(run, str(weights), "models")
    client.log_artifact(run, str(weights.parent / "config.json"))
    return run


def test_the_folds_come_from_the_runs_nested_under_the_parent(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = mlflow.MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment("cv", artifact_location=(tmp_path / "artifacts").as_uri())
    parent = client.create_run(
        experiment, run_name="cvm", tags={"crossval": "cvm", "crossval_role": "parent"}
    )
    parent_id = parent.info.run_id
    client.log_metric(parent_id, "eval_threshold_dice_mean", 0.7)
    runs = [_fold_run(client, experiment, parent_id, fold, 2, tmp_path) for fold in (1, 0)][::-1]
    source = source_from_crossval(parent_id, uri, tmp_path / "work")
    assert [m["run_id"] for m in source.members] == runs and [m["fold"] for m in source.members] == [0, 1]
    assert [m["sha256"] for m in source.members] == [
        sha256(tmp_path / f"upload{i}" / "model.pt") for i in (0, 1)
    ]
    assert source.crossval == {"name": "cvm", "folds": 2} and source.mlflow["run_id"] == parent_id
    assert source.metrics == {"eval_threshold_dice_mean": 0.7}

    lonely = client.create_run(experiment, run_name="cvl", tags={"crossval": "cvl"}).info.run_id
    _fold_run(client, experiment, lonely, 1, 2, tmp_path / "lonely")
    with pytest.raises(FileNotFoundError, match="fold 0 of the cross-validation cvl has no run"):
        source_from_parent_run(lonely, uri, tmp_path / "work2")
    with pytest.raises(ValueError, match="not a folder and not an MLflow run id"):
        source_from_crossval("no-such-thing", uri, tmp_path)
