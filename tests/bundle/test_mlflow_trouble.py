"""MLflow under trouble (issue #7): real training processes against a contended SQLite database,
an unreachable server, a read-only database and a tracking server killed mid-training.

Each test runs ``python -m monai.bundle run training`` as a subprocess on the tiny recipe
(``TINY``: 4 phantom patients, 2 epochs, a 2-filter U-Net) with ``flush_every=1``, so every
iteration is a separate MLflow write. What training should have logged is computed from the
run's own checkpoint (``final.pt`` holds the trainer's iteration and epoch counters), not from
MLflow; what it could not log is read from its end-of-run report.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from pipeline.data.phantom import generate_dataset
from tests.support import CONFIGS, TINY, free_port, wait_until_up

ROOT = Path(__file__).resolve().parents[2]
EPOCH_METRICS = ("train_loss", "val_volume_dice", "val_dice", "val_bce", "val_dice_loss")


@pytest.fixture(scope="module")
def phantom(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("phantom") / "phantom_lgg"
    generate_dataset(folder, n_patients=TINY["phantom_patients"], seed=0)
    return folder


def _start(bundle_root: Path, phantom: Path, run_name: str, uri: str | None = None, **overrides):
    """A training subprocess; ``uri`` goes into MLFLOW_TRACKING_URI (None: the config decides)."""
    settings = dict(TINY, bundle_root=str(bundle_root), phantom_dir=str(phantom), run_name=run_name)
    settings.update({"mlflow_tracking#flush_every": 1}, **overrides)
    command = [sys.executable, "-m", "monai.bundle", "run", "training"]
    command += ["--config_file", str(CONFIGS / "train.json")]
    for key, value in settings.items():
        command += [f"--{key}", str(value).lower() if isinstance(value, bool) else str(value)]
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env.update(PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")  # 2 shared cores: 1 thread a process
    if uri is not None:
        env["MLFLOW_TRACKING_URI"] = uri
    bundle_root.mkdir(parents=True, exist_ok=True)
    # cwd: MLflow makes a folder "file:<path>" in the cwd for a sqlite:///file:... URI
    return subprocess.Popen(
        command, cwd=bundle_root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def _finish(process: subprocess.Popen, timeout: float = 240) -> str:
    """Wait for a training process; assert it succeeded; return its output (log and warnings)."""
    try:
        log, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        log, _ = process.communicate()
        pytest.fail(f"training did not finish within {timeout} s:\n{log[-3000:]}")
    assert process.returncode == 0, log[-4000:]
    return log


def _trained(run_dir: Path) -> tuple[int, int]:
    """(iterations, epochs) the trainer completed, from the checkpoints written to disk."""
    models = run_dir / "models"
    network = torch.load(models / "model.pt", weights_only=True)
    assert network and all(torch.isfinite(v).all() for v in network.values())
    trainer = torch.load(models / "final.pt", weights_only=True)["trainer"]
    epochs = trainer["iteration"] // trainer["epoch_length"]  # ignite's own state: iteration, epoch length
    assert epochs == TINY["epochs"]
    return trainer["iteration"], epochs


def _not_logged(log: str, uri: str) -> dict[str, int]:
    """The end-of-run report ``MLflow: not logged to <uri> (<cause>): 1 run, 30 params ...``."""
    match = re.search(rf"MLflow: not logged to {re.escape(uri)} \((.+?)\): (.+?)\. The checkpoints", log)
    assert match, f"no report of what was not logged:\n{log[-3000:]}"
    return {what: int(n) for n, what in re.findall(r"(\d+) ([a-z ]+?)(?:,|$)", match.group(2))}


@pytest.mark.slow
def test_two_runs_logging_to_one_sqlite_database_at_once_log_everything(tmp_path, phantom):
    """Both processes create the (missing) database together, then write every iteration."""
    from mlflow import MlflowClient

    db = tmp_path / "shared" / "mlflow.db"
    uri = f"sqlite:///{db}"
    processes = {
        name: _start(tmp_path / name, phantom, name, tracking_uri=uri) for name in ("first", "second")
    }
    try:
        logs = {name: _finish(process) for name, process in processes.items()}
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.kill()
                process.wait()

    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("lgg-segmentation")
    runs = {run.info.run_name: run for run in client.search_runs([experiment.experiment_id])}
    assert sorted(runs) == ["first", "second"]
    spans = []
    for name, run in runs.items():
        assert "MLflow logging failed" not in logs[name] and "not logged" not in logs[name], name
        assert run.info.status == "FINISHED"
        iterations, epochs = _trained(tmp_path / name / "outputs" / "runs" / name)
        per_epoch = math.ceil(int(run.data.params["train_slices"]) / TINY["batch_size"])
        assert iterations == epochs * per_epoch
        for key in ("train_loss_iter", "lr"):
            history = client.get_metric_history(run.info.run_id, key)
            assert sorted(m.step for m in history) == list(range(1, iterations + 1)), (name, key)
        for key in EPOCH_METRICS:
            history = client.get_metric_history(run.info.run_id, key)
            assert sorted(m.step for m in history) == list(range(1, epochs + 1)), (name, key)
        stamps = [m.timestamp for m in client.get_metric_history(run.info.run_id, "train_loss_iter")]
        spans.append((min(stamps), max(stamps)))
    # the two runs really wrote at the same time (otherwise this test proves nothing)
    assert max(start for start, _ in spans) < min(end for _, end in spans), spans


@pytest.mark.slow
def test_unreachable_tracking_server_costs_seconds_and_is_reported(tmp_path, phantom):
    """Nobody listens on the port: connection refused, after MLflow's 2 HTTP retries (~2.5 s).
    The handler makes that one call and then counts what it could not log."""
    uri = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    log = _finish(_start(tmp_path, phantom, "offline", uri=uri), timeout=200)
    seconds = time.monotonic() - started
    run_dir = tmp_path / "outputs" / "runs" / "offline"
    iterations, epochs = _trained(run_dir)
    assert (run_dir / "config.json").is_file() and not (run_dir / "mlflow_run.json").exists()

    assert f"MLflow logging failed at {uri} (ConnectionRefusedError" in log
    assert "MLflow is not contacted again" in log
    # one failed call (2 HTTP retries), not one per iteration
    assert log.count("Retrying (") <= 2, log.count("Retrying (")
    report = _not_logged(log, uri)
    assert report["run"] == 1 and report["artifacts"] == 3  # split file, model.pt, config.json
    assert report["model"] == 1  # the MLflow Model of model.pt
    assert report["iteration metric values"] == 2 * iterations  # loss and lr
    assert report["epoch metric values"] >= len(EPOCH_METRICS) * epochs
    assert report["params and tags"] >= 20
    print(f"unreachable server: training finished in {seconds:.1f} s")


@pytest.mark.slow
def test_read_only_database_keeps_training_and_is_left_untouched(tmp_path, phantom):
    """We are root, so chmod does not make a file read-only for us. Instead the store is opened
    through SQLite's own read-only mode, ``sqlite:///file:<db>?mode=ro&uri=true`` (SQLAlchemy
    passes ``uri=true`` to sqlite3; MLflow accepts the URI): every read works, every write
    fails with "attempt to write a readonly database", as for a file the user may not write.
    The database is first made by a normal MLflow client (tables migrated, one earlier run)."""
    from mlflow import MlflowClient

    db = tmp_path / "store" / "mlflow.db"
    db.parent.mkdir()
    writer = MlflowClient(tracking_uri=f"sqlite:///{db}")
    experiment_id = writer.create_experiment("lgg-segmentation")
    earlier = writer.create_run(experiment_id, run_name="earlier").info.run_id
    writer.log_metric(earlier, "val_dice", 0.5, step=1)
    writer.set_terminated(earlier)
    before = hashlib.sha256(db.read_bytes()).hexdigest()

    uri = f"sqlite:///file:{db}?mode=ro&uri=true"
    log = _finish(_start(tmp_path / "train", phantom, "readonly", tracking_uri=uri))
    run_dir = tmp_path / "train" / "outputs" / "runs" / "readonly"
    iterations, epochs = _trained(run_dir)

    assert f"MLflow logging failed at {uri} (OperationalError: attempt to write a readonly database" in log
    report = _not_logged(log, uri)
    assert report["run"] == 1 and report["artifacts"] == 3 and report["model"] == 1
    assert report["iteration metric values"] == 2 * iterations
    assert report["epoch metric values"] >= len(EPOCH_METRICS) * epochs

    assert hashlib.sha256(db.read_bytes()).hexdigest() == before
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as connection:
        assert connection.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    runs = MlflowClient(tracking_uri=f"sqlite:///{db}").search_runs([experiment_id])
    assert [run.info.run_id for run in runs] == [earlier]


@pytest.mark.slow
def test_tracking_server_killed_mid_training(tmp_path, phantom):
    """A real ``mlflow server`` (sqlite backend, 1 worker) is killed after the run has logged a
    few iterations. The fixture of tests/pipeline/tracking/test_compare.py does not hand out its process,
    so the server is started here (with that module's helpers) in its own process group, which
    is killed at once. Afterwards the server's database says what reached it; the run's report
    must account for the rest, and the handler must stop calling the dead server."""
    from mlflow import MlflowClient

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server_log = tmp_path / "server.log"
    command = [str(Path(sys.executable).with_name("mlflow")), "server", "--workers", "1"]
    command += ["--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}"]
    command += ["--artifacts-destination", str(tmp_path / "artifacts"), "--host", "127.0.0.1"]
    command += ["--port", str(port), "--allowed-hosts", f"127.0.0.1:{port}"]
    env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")  # no job runners: -8 s
    with open(server_log, "w") as handle:
        server = subprocess.Popen(
            command, stdout=handle, stderr=subprocess.STDOUT, cwd=tmp_path, env=env, start_new_session=True
        )
    training, seen = None, 0
    try:
        wait_until_up(url, server, server_log)
        training = _start(tmp_path / "train", phantom, "killed", uri=url)
        run_file = tmp_path / "train" / "outputs" / "runs" / "killed" / "mlflow_run.json"
        deadline = time.monotonic() + 120
        while seen < 5 and time.monotonic() < deadline and training.poll() is None:
            time.sleep(0.2)
            if run_file.is_file():
                run_id = json.loads(run_file.read_text())["run_id"]
                seen = len(MlflowClient(tracking_uri=url).get_metric_history(run_id, "lr"))
        assert seen >= 5 and training.poll() is None, "the server was not killed mid-training"
    except BaseException:
        if training is not None:
            training.kill()
            training.wait()
        raise
    finally:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()
    log = _finish(training)
    iterations, _ = _trained(tmp_path / "train" / "outputs" / "runs" / "killed")

    stored = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'server.db'}")
    assert stored.get_run(run_id).info.status == "RUNNING"  # nobody could tell the dead server
    logged = sum(len(stored.get_metric_history(run_id, key)) for key in ("train_loss_iter", "lr"))
    assert 10 <= logged < 2 * iterations
    assert f"MLflow logging failed at {url} (ConnectionRefusedError" in log
    report = _not_logged(log, url)
    # a batch the server stored just before dying may have lost its answer: counted in both
    assert 2 * iterations <= logged + report["iteration metric values"] <= 2 * iterations + 2
    assert report["final run status"] == 1 and report["artifacts"] == 3 and report["model"] == 1
    assert not stored.search_logged_models([stored.get_run(run_id).info.experiment_id])
    # the breaker: one failed call after the kill, one final status attempt; not one per iteration.
    # MLflow's system-metrics thread makes one failed call of its own (2 retries), then stops
    monitor = log.count("system_metrics_monitor: Failed to get mlflow run")
    assert monitor <= 1 and log.count("Retrying (") <= 4 + 2 * monitor, log.count("Retrying (")
    print(f"killed server: {logged} iteration values logged, {report}")
