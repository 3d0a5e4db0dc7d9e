"""Tests of pipeline.tracking.curves: MLflow metric histories read back and drawn."""

from __future__ import annotations

import matplotlib.image as mpimg
import pytest

from pipeline.tracking.curves import learning_curves, mlflow_histories


def _read(path):
    return mpimg.imread(path)


def test_learning_curves_from_mlflow_sqlite(tmp_path, mlflow_client):
    client = mlflow_client
    experiment_id = client.create_experiment("figures", artifact_location=(tmp_path / "artifacts").as_uri())
    logged = {
        "baseline": {
            "train_loss": [(1, 0.9), (2, 0.6), (3, 0.4)],
            "val_dice": [(1, 0.3), (2, 0.5), (3, 0.6)],
        },
        "augmented": {"train_loss": [(1, 0.8), (2, 0.5)], "val_volume_dice": [(1, 0.4), (2, 0.7)]},
    }
    run_ids = []
    for name, metrics in logged.items():
        run_id = client.create_run(experiment_id, run_name=name).info.run_id
        for key, points in metrics.items():
            for step, value in reversed(points):  # logged out of order on purpose
                client.log_metric(run_id, key, value, step=step)
        client.set_terminated(run_id)
        run_ids.append(run_id)

    histories = mlflow_histories(client, run_ids, ("train_loss", "val_dice", "val_volume_dice"))
    assert histories == logged

    out = learning_curves(histories, tmp_path / "curves.png", dpi=40)
    pixels = _read(out)
    assert pixels.shape[:2] == (round(3.5 * 40), round(3 * 4.5 * 40))
    assert pixels[..., :3].std() > 0.05
    assert learning_curves(histories, tmp_path / "one.png", metrics=("val_dice",), dpi=40).exists()
    with pytest.raises(ValueError, match="histories"):
        learning_curves({}, tmp_path / "bad.png")


def test_mlflow_histories_labels_runs_sharing_a_name_by_id(tmp_path, mlflow_client):
    client = mlflow_client
    experiment_id = client.create_experiment("dupes", artifact_location=(tmp_path / "artifacts").as_uri())
    run_ids = [client.create_run(experiment_id, run_name="same").info.run_id for _ in range(2)]
    client.log_metric(run_ids[0], "val_dice", 0.5, step=1)
    histories = mlflow_histories(client, run_ids, ["val_dice"])
    assert set(histories) == {f"same ({run_id[:8]})" for run_id in run_ids}
    assert histories[f"same ({run_ids[0][:8]})"] == {"val_dice": [(1, 0.5)]}
    assert histories[f"same ({run_ids[1][:8]})"] == {}
