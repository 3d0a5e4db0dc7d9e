"""The evaluation's MLflow metrics: every figure of summary.json's aggregates, named by option."""

from __future__ import annotations

import json

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
