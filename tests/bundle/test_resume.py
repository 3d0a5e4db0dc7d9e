"""Kill a real training process at random moments, resume it, and compare with an uninterrupted run.

Also: two runs with the same seed give identical per-epoch metrics, and bad settings are refused
before any work starts.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from tests.support import CONFIGS, TINY, bundle_command, run_bundle

ROOT = Path(__file__).resolve().parents[2]
EPOCHS = 4
METRICS = ("val_volume_dice", "best_val_volume_dice", "val_dice", "val_bce", "val_dice_loss", "train_loss")


def _command(bundle_root: Path, run_name: str, resume: bool) -> list[str]:
    return bundle_command(bundle_root, epochs=EPOCHS, run_name=run_name, resume=resume)


def _metrics(bundle_root: Path, run_name: str) -> dict[str, dict[int, float]]:
    import json

    from mlflow import MlflowClient

    record = json.loads((bundle_root / "outputs" / "runs" / run_name / "mlflow_run.json").read_text())
    client = MlflowClient(tracking_uri=record["tracking_uri"])
    out = {}
    for name in METRICS:
        history = sorted(
            client.get_metric_history(record["run_id"], name), key=lambda m: (m.step, m.timestamp)
        )
        out[name] = {m.step: m.value for m in history}  # a redone epoch: its last value
    out["status"] = client.get_run(record["run_id"]).info.status
    return out


def _last_epoch(models: Path) -> int:
    """The newest checkpoint_epoch=N.pt of a run (0 before the first)."""
    epochs = [int(p.stem.split("=")[1]) for p in models.glob("checkpoint_epoch=*.pt")]
    return max(epochs, default=0)


@pytest.mark.slow
def test_killed_and_resumed_run_matches_an_uninterrupted_run(bundle_with_phantom):
    tmp_path = bundle_with_phantom
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    subprocess.run(_command(tmp_path, "baseline", False), cwd=ROOT, env=env, check=True, capture_output=True)
    # this machine's epoch time, from the baseline's checkpoint times (the last 3 are kept)
    stamps = sorted(
        p.stat().st_mtime for p in (tmp_path / "outputs/runs/baseline/models").glob("checkpoint_*")
    )
    epoch_seconds = (stamps[-1] - stamps[0]) / (len(stamps) - 1)

    rng = random.Random(1234)
    models = tmp_path / "outputs" / "runs" / "killed" / "models"
    kills, started = 0, time.monotonic()
    while kills < 3 and time.monotonic() - started < 240:
        done = _last_epoch(models)
        process = subprocess.Popen(
            _command(tmp_path, "killed", done > 0),
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        # a random moment of the epoch after the next checkpoint (mid-step, mid-validation or
        # mid-checkpoint write): waiting for the checkpoint, not a fixed delay, keeps the kill in
        # the training whatever the machine's speed and start-up time
        while process.poll() is None and _last_epoch(models) <= done:
            time.sleep(0.05)
        # at most 1 s: shorter than any epoch here even when the load changes during the test
        time.sleep(rng.uniform(0.0, 1.0) * min(epoch_seconds, 1.0))
        if process.poll() is not None:
            break  # finished before the kill
        process.send_signal(signal.SIGKILL)
        process.wait()
        kills += 1
        for checkpoint in models.glob("*.pt"):
            torch.load(checkpoint, weights_only=True)  # every visible checkpoint is complete
    assert kills >= 1, "the run finished before it could be killed: make it longer"
    final = subprocess.run(
        _command(tmp_path, "killed", _last_epoch(models) > 0),
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert final.returncode == 0, final.stderr[-3000:]

    expected, got = _metrics(tmp_path, "baseline"), _metrics(tmp_path, "killed")
    assert got["status"] == "FINISHED"
    worst = 0.0
    for name in METRICS:
        assert sorted(got[name]) == list(range(1, EPOCHS + 1)), name
        for epoch, value in expected[name].items():
            worst = max(worst, abs(got[name][epoch] - value))
    assert worst < 1e-5, f"worst metric difference {worst}"
    base = torch.load(tmp_path / "outputs/runs/baseline/models/final.pt", weights_only=True)["network"]
    resumed = torch.load(models / "final.pt", weights_only=True)["network"]
    for key in base:
        torch.testing.assert_close(resumed[key], base[key], atol=1e-5, rtol=1e-5)
    # one source of best: model.pt and the export's headline (metadata eval_metrics, from MLflow)
    from pipeline.export.build import build_metadata
    from pipeline.export.sources import source_from_checkpoint
    from pipeline.tracking.logged_model import network_settings

    headlines = []
    for run in ("baseline", "killed"):
        run_models = tmp_path / "outputs" / "runs" / run / "models"
        source = source_from_checkpoint(run_models / "model.pt")
        meta = build_metadata(source, network_settings(source.config), TINY["image_size"])
        headlines.append(meta["eval_metrics"]["best_val_volume_dice"])
        best = torch.load(run_models / "model.pt", weights_only=True)
        if run == "baseline":
            best_baseline = best
    assert headlines[0] == headlines[1] == round(max(expected["val_volume_dice"].values()), 6)
    for key in best_baseline:
        torch.testing.assert_close(best[key], best_baseline[key], atol=1e-5, rtol=1e-5)
    print(f"kill/resume cycles: {kills} (epoch {epoch_seconds:.1f} s), worst metric difference: {worst:.2e}")


@pytest.mark.slow
def test_same_seed_gives_identical_per_epoch_metrics(tmp_path):
    first = run_bundle(tmp_path / "a", epochs=2)
    second = run_bundle(tmp_path / "b", epochs=2)
    a = first.parser.get_parsed_content("validate#evaluator").state.metrics
    b = second.parser.get_parsed_content("validate#evaluator").state.metrics
    assert a == b
    wa = first.parser.get_parsed_content("network").state_dict()
    wb = second.parser.get_parsed_content("network").state_dict()
    for key in wa:
        assert torch.equal(wa[key], wb[key]), key


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"epochs": -1}, "--epochs must be a whole number >= 1"),
        ({"epochs": "2"}, "not the string '2': pass it without quotes (--epochs 2)"),
        ({"batch_size": 0}, "--batch_size must be a whole number >= 1"),
        ({"image_size": 62}, "--image_size must be divisible by 4"),
        ({"learning_rate": "fast"}, "--learning_rate must be a positive number"),
    ],
)
def test_bad_settings_are_refused_before_any_work(tmp_path, override, message):
    from monai.bundle import ConfigWorkflow

    workflow = ConfigWorkflow(
        config_file=str(CONFIGS / "train.json"),
        logging_file=False,
        workflow_type="train",
        **dict(TINY, bundle_root=str(tmp_path), **override),
    )
    with pytest.raises(Exception) as info:  # MONAI wraps it: "Failed to evaluate ConfigExpression"
        workflow.initialize()
    chain, error = [], info.value
    while error is not None:
        chain.append(error)
        error = error.__cause__
    assert any(isinstance(e, ValueError) and message in str(e) for e in chain), chain
    assert not (tmp_path / "outputs" / "phantom_lgg").exists()
