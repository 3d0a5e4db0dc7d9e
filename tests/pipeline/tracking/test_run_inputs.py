"""Dataset inputs and system metrics of a run, read back through MLflow's client (SQLite store)."""

from __future__ import annotations

import json
import time

import pytest

from pipeline.tracking.run_inputs import SystemMetrics, dataset_inputs

DATASETS = {
    "training": {
        "name": "kaggle_3m-train",
        "digest": "ab12cd34",
        "source": "/data/kaggle_3m",
        "patients": 80,
    },
    "validation": {
        "name": "kaggle_3m-val",
        "digest": "ab12cd34",
        "source": "/data/kaggle_3m",
        "patients": 30,
    },
}


def test_datasets_are_logged_once_per_context(mlflow_client):
    experiment = mlflow_client.create_experiment("inputs")
    run_id = mlflow_client.create_run(experiment).info.run_id
    mlflow_client.log_inputs(run_id, dataset_inputs(DATASETS))
    logged = mlflow_client.get_run(run_id).inputs.dataset_inputs
    by_context = {i.tags[0].value: i.dataset for i in logged}
    assert set(by_context) == {"training", "validation"}
    assert by_context["validation"].digest == "ab12cd34" and by_context["validation"].name == "kaggle_3m-val"
    assert json.loads(by_context["training"].profile) == {"patients": 80}
    assert json.loads(by_context["training"].source) == {"uri": "/data/kaggle_3m"}
    # a resumed run: what it holds is not logged again; a new context is
    assert dataset_inputs(DATASETS, logged) == []
    evaluation = {"evaluation": dict(DATASETS["validation"], name="kaggle_3m-test")}
    assert [i.tags[0].value for i in dataset_inputs({**DATASETS, **evaluation}, logged)] == ["evaluation"]


def test_a_dataset_without_name_or_digest_is_refused():
    with pytest.raises(ValueError, match="'training' needs digest"):
        dataset_inputs({"training": {"name": "x"}})


def test_system_metrics_reach_the_run_and_a_bad_interval_is_refused(mlflow_client):
    experiment = mlflow_client.create_experiment("system")
    run_id = mlflow_client.create_run(experiment).info.run_id
    monitor = SystemMetrics(interval=0.2)
    assert monitor.start(run_id, mlflow_client.tracking_uri)
    time.sleep(1.5)
    monitor.stop()
    metrics = mlflow_client.get_run(run_id).data.metrics
    assert 0.0 <= metrics["system/cpu_utilization_percentage"] <= 100.0 * 64
    assert metrics["system/system_memory_usage_megabytes"] > 0
    with pytest.raises(ValueError, match="interval must be > 0"):
        SystemMetrics(interval=0)
