"""pipeline.tracking.compare: runs written into a local MLflow store by hand, and two real training runs
logged to a real ``mlflow server`` process (slow)."""

from __future__ import annotations

import json
import urllib.request

import pytest

from pipeline import cli
from pipeline.tracking.compare import compare_runs, differing_params, format_table

HISTORIES = {  # params as training logs them (epochs and MONAI's max_epochs), val_volume_dice, train_loss
    "lr-high": (
        {"learning_rate": "0.1", "batch_size": "4", "epochs": "3", "max_epochs": "3"},
        [0.2, 0.5, 0.4],
        [0.9, 0.6, 0.5],
    ),
    "lr-low": (
        {"learning_rate": "0.01", "batch_size": "4", "epochs": "3", "max_epochs": "3"},
        [0.3, 0.35, 0.6],
        [0.8, 0.7, 0.65],
    ),
    "crashed": (
        {"learning_rate": "0.5", "batch_size": "4", "epochs": "20", "max_epochs": "20"},
        [],
        [1.2],
    ),
}


@pytest.fixture
def store(tmp_path, monkeypatch):
    """A SQLite MLflow store holding three runs; returns (uri, {name: run_id})."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    experiment_id = client.create_experiment(
        "lgg-segmentation", artifact_location=(tmp_path / "art").as_uri()
    )
    ids = {}
    for name, (params, dice, loss) in HISTORIES.items():
        run_id = client.create_run(experiment_id, run_name=name).info.run_id
        metrics = [Metric("val_volume_dice", v, 1000 * i, i + 1) for i, v in enumerate(dice)]
        metrics += [Metric("val_dice", v / 2, 1000 * i, i + 1) for i, v in enumerate(dice)]
        metrics += [Metric("train_loss", v, 1000 * i, i + 1) for i, v in enumerate(loss)]
        client.log_batch(run_id, metrics=metrics, params=[Param(k, v) for k, v in params.items()])
        client.set_terminated(run_id, "FINISHED" if dice else "FAILED")
        ids[name] = run_id
    return uri, ids


def test_runs_sorted_by_best_metric_with_differing_params_only(store, tmp_path):
    uri, ids = store
    summaries, png = compare_runs(uri, out_png=tmp_path / "curves.png")
    assert [s.name for s in summaries] == ["lr-low", "lr-high", "crashed"]  # best 0.6, 0.5, none
    low, high, crashed = summaries
    assert (high.best, high.final) == (0.5, 0.4) and (low.best, low.final) == (0.6, 0.6)
    assert crashed.best is None and crashed.status == "FAILED"
    assert low.metrics["final_val_dice"] == pytest.approx(0.3) and low.epochs == 3
    assert low.wall_seconds is not None and low.wall_seconds >= 0
    assert differing_params(summaries) == ["learning_rate"]  # epochs differ too: the epochs column says
    table = format_table(summaries).splitlines()
    assert "learning_rate" in table[0] and "batch_size" not in table[0]
    assert table[2].startswith("lr-low") and "0.6000" in table[2] and ids["lr-low"] in table[2]
    assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def columns(line: str) -> list[str]:
    return [cell for cell in line.split("  ") if cell.strip()]


def test_every_column_once_and_epochs_logged_of_planned(store):
    uri, ids = store
    for metric in ("val_volume_dice", "val_dice", "train_loss"):
        summaries, _ = compare_runs(uri, metric=metric)
        header = [c.strip() for c in columns(format_table(summaries, metric).splitlines()[0])]
        assert len(header) == len(set(header)), header
        assert header.count("epochs") == 1 and "max_epochs" not in header
        assert {f"best {metric}", f"final {metric}", "final val_dice", "best val_volume_dice"} <= set(header)
    rows = {line.split()[0]: line for line in format_table(summaries).splitlines()[2:]}
    assert " 3/3 " in rows["lr-low"] and " 1/20 " in rows["crashed"]  # crashed after 1 of 20 epochs


def test_a_metric_no_run_logged_is_refused_naming_those_logged(store, tmp_path, caplog):
    uri, _ = store
    with pytest.raises(LookupError, match=r"no run logged the metric 'nonsense'.*train_loss, val_dice"):
        compare_runs(uri, metric="nonsense")
    out = tmp_path / "c.png"
    assert cli.main(["compare", "--tracking-uri", uri, "--metric", "nonsense", "--out", str(out)]) == 1
    assert "'nonsense'" in caplog.text and "val_volume_dice" in caplog.text and not out.exists()
    with pytest.raises(LookupError, match=r"did you mean val_volume_dice"):
        compare_runs(uri, metric="val_volum_dice")


def test_a_loss_is_sorted_lowest_first_and_run_ids_restrict(store):
    uri, ids = store
    summaries, png = compare_runs(uri, metric="train_loss")
    assert [s.name for s in summaries] == ["lr-high", "lr-low", "crashed"]  # min loss 0.5, 0.65, 1.2
    assert png is None
    summaries, _ = compare_runs(uri, run_ids=[ids["crashed"], ids["lr-high"]])
    assert [s.name for s in summaries] == ["lr-high", "crashed"]


def test_cli_reads_the_environment_uri_and_reports_unknown_experiments(
    store, tmp_path, monkeypatch, capsys, caplog
):
    uri, _ = store
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    assert cli.main(["compare", "--out", str(tmp_path / "c.png")]) == 0
    out = capsys.readouterr().out
    assert out.index("lr-low") < out.index("lr-high") < out.index("crashed")
    assert (tmp_path / "c.png").is_file()
    assert cli.main(["compare", "--experiment", "nope", "--out", str(tmp_path / "d.png")]) == 1
    assert "no MLflow experiment 'nope'" in caplog.text and "lgg-segmentation" in caplog.text
    assert cli.main(["compare", "--runs", "0123456789abcdef", "--out", str(tmp_path / "e.png")]) == 1


# -- a real tracking server (the mlflow_server fixture is in tests/conftest.py) ---------------


def rest_search(url: str, experiment_id: str) -> dict:
    body = json.dumps({"experiment_ids": [experiment_id], "max_results": 10}).encode()
    request = urllib.request.Request(
        url + "/api/2.0/mlflow/runs/search", data=body, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


@pytest.mark.slow
def test_two_bundle_runs_on_a_tracking_server_are_compared(mlflow_server, tmp_path, monkeypatch, capsys):
    from mlflow import MlflowClient

    from pipeline.data.phantom import generate_dataset
    from tests.support import run_bundle

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    phantom = tmp_path / "phantom"
    generate_dataset(phantom, n_patients=3, seed=1, workers=1)  # shared: generated once
    for name, lr in (("lr-high", 0.1), ("lr-low", 0.01)):
        run_bundle(
            tmp_path / name,
            tracking_uri=mlflow_server,
            learning_rate=lr,
            run_name=name,
            phantom_dir=str(phantom),
            phantom_patients=3,
            image_size=32,
            epochs=2,
        )

    client = MlflowClient(tracking_uri=mlflow_server)
    experiment = client.get_experiment_by_name("lgg-segmentation")
    rest = rest_search(mlflow_server, experiment.experiment_id)["runs"]
    by_name = {r["info"]["run_name"]: r for r in rest}
    assert set(by_name) == {"lr-high", "lr-low"}
    for name, lr in (("lr-high", "0.1"), ("lr-low", "0.01")):
        params = {p["key"]: p["value"] for p in by_name[name]["data"]["params"]}
        assert params["learning_rate"] == lr and by_name[name]["info"]["status"] == "FINISHED"

    summaries, png = compare_runs(mlflow_server, out_png=tmp_path / "curves.png")
    assert {s.name for s in summaries} == {"lr-high", "lr-low"} and png.is_file()
    assert differing_params(summaries) == ["learning_rate"]
    bests = [s.best for s in summaries]
    assert bests == sorted(bests, reverse=True)
    for summary in summaries:
        latest = {m["key"]: m["value"] for m in by_name[summary.name]["data"]["metrics"]}
        assert summary.final == pytest.approx(latest["val_volume_dice"])
        assert summary.metrics["final_val_dice"] == pytest.approx(latest["val_dice"])
        assert summary.best == pytest.approx(latest["best_val_volume_dice"])
        assert summary.epochs == 2

    assert cli.main(["compare", "--tracking-uri", mlflow_server, "--out", str(tmp_path / "cli.png")]) == 0
    assert "lr-high" in capsys.readouterr().out

    # export straight from the server: weights and config come through the artifact proxy
    run_id = by_name["lr-low"]["info"]["run_id"]
    out = tmp_path / "bundle"
    assert cli.main(["export", "--run", run_id, "--tracking-uri", mlflow_server, "--out", str(out)]) == 0
    meta = json.loads((out / "configs" / "metadata.json").read_text())
    assert meta["mlflow"]["run_id"] == run_id and meta["image_size"] == 32
    assert meta["eval_metrics"]["val_volume_dice"] == pytest.approx(
        summaries[[s.name for s in summaries].index("lr-low")].final, abs=1e-6
    )
