"""The evaluation's MLflow metrics: every figure of summary.json's aggregates, named by option."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.tracking.evaluation_run import EvaluationTracking, summary_metrics


def _summary() -> dict:
    return {
        "aggregates": {
            "threshold+lcc": {
                "dice": {"mean": 0.6, "median": 0.7, "count": 5, "n_undefined": 1},
                "lesion_dice": {"mean": 0.8, "median": None, "count": 4},
                "fp_voxels_lesion_free": {
                    "mean": 150.0,
                    "median": 150.0,
                    "max": 300.0,
                    "total": 300.0,
                    "count": 2,
                },
                "sensitivity": 0.75,
                "specificity": None,
                "detection": {
                    "true_positive": 3,
                    "false_negative": 1,
                    "true_negative": 0,
                    "false_positive": 2,
                },
            }
        }
    }


def test_summary_metrics_take_statistics_and_plain_numbers():
    assert summary_metrics(_summary()) == {
        "eval_threshold_lcc_dice_mean": 0.6,
        "eval_threshold_lcc_dice_median": 0.7,
        "eval_threshold_lcc_lesion_dice_mean": 0.8,
        "eval_threshold_lcc_fp_voxels_lesion_free_mean": 150.0,
        "eval_threshold_lcc_fp_voxels_lesion_free_median": 150.0,
        "eval_threshold_lcc_fp_voxels_lesion_free_max": 300.0,
        "eval_threshold_lcc_fp_voxels_lesion_free_total": 300.0,
        "eval_threshold_lcc_sensitivity": 0.75,
    }


def test_the_figures_reach_an_mlflow_run(tmp_path, mlflow_client, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (tmp_path / "summary.json").write_text(json.dumps(_summary()))
    tracking = EvaluationTracking(
        str(tmp_path / "model.pt"), tracking_uri=mlflow_client.tracking_uri, learning_curves=False
    )
    tracking.log_evaluation(_summary(), {"summary": tmp_path / "summary.json"})
    assert tracking.run_id is not None
    logged = mlflow_client.get_run(tracking.run_id).data.metrics
    assert logged["eval_threshold_lcc_sensitivity"] == pytest.approx(0.75)
    assert logged["eval_threshold_lcc_fp_voxels_lesion_free_max"] == pytest.approx(300.0)
    assert not any("specificity" in name or "detection" in name for name in logged)
    # the artifacts go beside the SQLite database, never into the working directory's ./mlruns
    db = Path(mlflow_client.tracking_uri.removeprefix("sqlite:///"))
    stored = db.parent / "mlartifacts"
    assert [p.name for p in stored.rglob("summary.json")] == ["summary.json"]
    assert mlflow_client.get_run(tracking.run_id).info.artifact_uri.startswith(stored.as_uri())


def test_the_evaluated_data_is_a_dataset_input_of_the_training_run(tmp_path, mlflow_client, monkeypatch):
    """Logged into the run that trained the checkpoint, beside its training/validation inputs,
    once however often the same data is evaluated."""
    from pipeline.tracking.run_inputs import dataset_inputs

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    experiment = mlflow_client.create_experiment("evaluation-inputs", artifact_location=tmp_path.as_uri())
    run_id = mlflow_client.create_run(experiment).info.run_id
    validation = {"name": "kaggle_3m-val", "digest": "ab12cd34", "source": "/data/kaggle_3m", "patients": 30}
    mlflow_client.log_inputs(run_id, dataset_inputs({"validation": validation}))
    run_dir = tmp_path / "run"
    (run_dir / "models").mkdir(parents=True)
    record = {"run_id": run_id, "tracking_uri": mlflow_client.tracking_uri, "experiment": "evaluation-inputs"}
    (run_dir / "mlflow_run.json").write_text(json.dumps(record))
    (tmp_path / "summary.json").write_text(json.dumps(_summary()))
    evaluated = dict(validation, name="kaggle_3m-eval-val", slices=620, eval_set="val")
    for _ in range(2):
        tracking = EvaluationTracking(
            str(run_dir / "models" / "model.pt"), dataset=evaluated, learning_curves=False
        )
        tracking.log_evaluation(_summary(), {"summary": tmp_path / "summary.json"})
        assert tracking.run_id == run_id
    inputs = mlflow_client.get_run(run_id).inputs.dataset_inputs
    by_context = {i.tags[0].value: i.dataset for i in inputs}
    assert sorted(by_context) == ["evaluation", "validation"] and len(inputs) == 2
    assert (
        by_context["evaluation"].name == "kaggle_3m-eval-val"
        and by_context["evaluation"].digest == "ab12cd34"
    )
    assert json.loads(by_context["evaluation"].profile) == {"eval_set": "val", "patients": 30, "slices": 620}


def test_evaluate_json_describes_the_evaluated_records():
    """evaluate.json's dataset: the folder, the fingerprint and counts of the records evaluated."""
    from types import SimpleNamespace

    from monai.bundle import ConfigParser

    from tests.support import CONFIGS

    parser = ConfigParser()
    parser.read_config([str(CONFIGS / "train.json"), str(CONFIGS / "evaluate.json")])
    records = [{"patient": p, "slice": s} for p in ("TCGA_A", "TCGA_B") for s in range(3)] + [
        {"patient": "TCGA_C", "slice": 1}
    ]
    data = SimpleNamespace(dataset_dir="/data/kaggle_3m", fingerprint="f00d", split_file="/s/split.json")
    parser.update({"data": data, "validate#dataset#data": records, "eval_set": "all"})
    assert parser.get_parsed_content("evaluation_tracking#dataset") == {
        "name": "kaggle_3m-eval-all",
        "digest": "f00d",
        "source": "/data/kaggle_3m",
        "split_file": "/s/split.json",
        "eval_set": "all",
        "patients": 3,
        "slices": 7,
    }
