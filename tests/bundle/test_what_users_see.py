"""What a person sees when training stops: our message on the last line, and Ctrl-C in one line."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support import bundle_command

ROOT = Path(__file__).resolve().parents[2]


def _command(bundle_root: Path, **overrides) -> list[str]:
    return bundle_command(bundle_root, **overrides)


def _env() -> dict:
    return dict(os.environ, PYTHONPATH=str(ROOT))


def _last_line(text: str) -> str:
    return [line for line in text.splitlines() if line.strip()][-1]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("overrides", "last_line"),
    [
        (
            {"dataset_dir": "/nonexistent/kaggle_3m"},
            "DatasetError: dataset_dir /nonexistent/kaggle_3m does not exist",
        ),
        ({"epochs": -1}, "ValueError: --epochs must be a whole number >= 1, not -1"),
        ({"image_size": 62}, "ValueError: --image_size must be divisible by 4"),
        ({"output_dir": "/tmp/elsewhere"}, "ValueError: --output_dir /tmp/elsewhere would move only part"),
    ],
)
def test_the_last_line_is_our_message(tmp_path, overrides, last_line):
    done = subprocess.run(
        _command(tmp_path, **overrides), cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300
    )
    assert done.returncode != 0
    assert "Traceback" in done.stderr  # the traceback stays above it
    assert _last_line(done.stderr).startswith(last_line), done.stderr[-1500:]


@pytest.mark.slow
def test_ctrl_c_says_how_to_resume_and_marks_the_run_killed(bundle_with_phantom):
    from mlflow import MlflowClient

    tmp_path = bundle_with_phantom
    process = subprocess.Popen(
        _command(tmp_path, epochs=30, run_name="long"),
        cwd=ROOT,
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    models = tmp_path / "outputs" / "runs" / "long" / "models"
    deadline = time.monotonic() + 240
    while not list(models.glob("checkpoint_epoch=*.pt")) and time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()[1][-2000:]
        time.sleep(0.1)
    process.send_signal(signal.SIGINT)
    stderr = process.communicate(timeout=120)[1]
    assert process.returncode != 0
    assert "Traceback" not in stderr, stderr[-3000:]
    last = _last_line(stderr)
    assert last.startswith("Training interrupted in epoch") and "checkpoint_epoch=" in last, last
    record = json.loads((models.parent / "mlflow_run.json").read_text())
    assert MlflowClient(tracking_uri=record["tracking_uri"]).get_run(record["run_id"]).info.status == "KILLED"

    # the printed command resumes the run (here with fewer epochs, to finish quickly)
    command = shlex.split(last.split("Resume with: ", 1)[1])
    assert command[:3] == ["python", "-m", "monai.bundle"] and command[-4:] == [
        "--run_name",
        "long",
        "--resume",
        "true",
    ]
    command = [sys.executable, *command[1:], "--epochs", "2"]
    resumed = subprocess.run(command, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    client = MlflowClient(tracking_uri=record["tracking_uri"])
    assert client.get_run(record["run_id"]).info.status == "FINISHED"
    # the merged config, rebuilt from the command line (files, then overrides), is in the run
    # folder and in the MLflow run; the resume's `--epochs 2` and the typed values included
    config = json.loads((models.parent / "config.json").read_text())
    assert config["epochs"] == 2 and config["network_def"]["n_filters"] == 2 and config["run_name"] == "long"
    # as the CLI delivers them: `--show_progress false` is the string "false" (fire's parsing)
    assert config["show_progress"] == "false" and config["network_def"]["depth"] == 3
    assert "config.json" in {a.path for a in client.list_artifacts(record["run_id"])}


@pytest.mark.slow
def test_monai_tracking_switch_is_refused_before_training_with_how_to_log_elsewhere(tmp_path):
    from mlflow import MlflowClient

    done = subprocess.run(
        [*_command(tmp_path), "--tracking", "mlflow"],
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode != 0
    last = _last_line(done.stderr)
    assert last.startswith("ValueError: --tracking mlflow adds MONAI's MLFlowHandler"), done.stderr[-2000:]
    assert "--tracking_uri" in last and "MLFLOW_TRACKING_URI" in last
    assert "float() argument" not in done.stderr  # refused before MONAI's handler logged anything
    db = tmp_path / "outputs" / "mlflow.db"
    if db.exists():  # no MLflow run was opened by either handler
        client = MlflowClient(tracking_uri=f"sqlite:///{db}")
        assert [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])] == []


@pytest.mark.slow
def test_the_end_of_run_summary_gives_commands_that_work(bundle_with_phantom):
    from mlflow import MlflowClient

    tmp_path = bundle_with_phantom
    done = subprocess.run(
        _command(tmp_path, epochs=1, run_name="summary"), cwd=ROOT, env=_env(), capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Epoch[1] Complete" not in done.stdout  # ignite's own per-epoch lines are silenced
    report = [
        line.split("pipeline.training.run_report: ", 1)[1]
        for line in done.stdout.splitlines()
        if "run_report" in line
    ]
    run_dir = tmp_path / "outputs" / "runs" / "summary"
    record = json.loads((run_dir / "mlflow_run.json").read_text())
    client = MlflowClient(tracking_uri=record["tracking_uri"])
    [best] = [m.value for m in client.get_metric_history(record["run_id"], "best_val_volume_dice")]
    assert report[0] == f"Training finished: best val_volume_dice {best:.4f} at epoch 1"
    assert report[1] == f"  model: {run_dir / 'models' / 'model.pt'}"
    assert report[2] == f"  MLflow run: summary ({record['run_id']}) at {record['tracking_uri']}"
    commands = {line.split(":", 1)[0].strip(): line.split(":", 1)[1].strip() for line in report[4:]}
    assert set(commands) == {"evaluate", "infer", "export", "MLflow UI"}

    def run(command: str, **replace: str) -> subprocess.CompletedProcess:
        for old, new in replace.items():
            command = command.replace(old, new)
        words = shlex.split(command)
        assert words[0] in ("python", "mlflow")
        return subprocess.run(
            [sys.executable, *words[1:]], cwd=ROOT, env=_env(), capture_output=True, text=True
        )

    evaluated = run(commands["evaluate"])
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    assert (run_dir / "evaluation" / "summary.json").is_file()
    out = tmp_path / "masks"
    scans = str(tmp_path / "outputs" / "phantom_lgg")
    inferred = run(commands["infer"] + f" --output_dir {out}", **{"<folder of scans>": scans})
    assert inferred.returncode == 0, inferred.stderr[-2000:]
    assert list(out.rglob("*_mask.tif"))
