"""Runs that never mix: two trainings started together in the same outputs folder (real processes)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.support import bundle_command

ROOT = Path(__file__).resolve().parents[2]


def _start(bundle_root: Path, **overrides) -> subprocess.Popen:
    args = bundle_command(bundle_root, **dict(dict(epochs=1), **overrides))
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.Popen(
        args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _finish(processes: list[subprocess.Popen]) -> list[tuple[int, str]]:
    errors = [p.communicate(timeout=300)[1] for p in processes]
    return [(p.returncode, err) for p, err in zip(processes, errors)]


def _run_record(run_dir: Path) -> dict:
    return json.loads((run_dir / "mlflow_run.json").read_text())


@pytest.fixture
def outputs(bundle_with_phantom):
    return bundle_with_phantom


@pytest.mark.slow
def test_two_runs_reserving_the_same_name_get_their_own_folder_and_mlflow_run(outputs):
    from mlflow import MlflowClient

    # what a sweep started in the same second does: both reserve the same readable name
    reserve = "$pipeline.training.runs.reserve_run_dir(@output_root + '/runs', 'sweep')"
    results = _finish([_start(outputs, run_name=reserve) for _ in range(2)])
    assert [code for code, _ in results] == [0, 0], [err[-2000:] for _, err in results]
    runs = outputs / "outputs" / "runs"
    assert sorted(p.name for p in runs.iterdir()) == ["sweep", "sweep-2"]
    records = [_run_record(runs / name) for name in ("sweep", "sweep-2")]
    assert records[0]["run_id"] != records[1]["run_id"]
    client = MlflowClient(tracking_uri=records[0]["tracking_uri"])
    for name, record in zip(("sweep", "sweep-2"), records):
        run = client.get_run(record["run_id"])
        assert run.info.run_name == name and run.info.status == "FINISHED"
        # each value logged once: one epoch, one validation
        assert len(client.get_metric_history(record["run_id"], "val_volume_dice")) == 1
        assert (runs / name / "models" / "model.pt").is_file()


@pytest.mark.slow
def test_a_run_name_already_taken_is_refused_and_the_first_run_is_untouched(outputs):
    first = _finish([_start(outputs, run_name="mine")])
    assert first[0][0] == 0, first[0][1][-2000:]
    models = outputs / "outputs" / "runs" / "mine" / "models"
    before = {p.name: p.stat().st_mtime_ns for p in models.iterdir()}
    record = _run_record(models.parent)

    [(code, stderr)] = _finish([_start(outputs, run_name="mine")])
    assert code != 0
    assert "run name 'mine' is taken" in stderr and "--run_name" in stderr and "--resume true" in stderr
    assert {p.name: p.stat().st_mtime_ns for p in models.iterdir()} == before
    assert _run_record(models.parent) == record
