"""``python -m pipeline crossval`` end to end on the tiny phantom, in real processes.

A 2-fold cross-validation is killed (the whole process group, SIGKILL) right after fold 0's first
epoch checkpoint, refused without ``--resume``, then resumed: fold 0 continues its own run, fold 1
is trained, both are evaluated out of fold and pooled. Checked against an independent reading of
what was written: the fold file and split files, the saved masks (Dice by hand with numpy), and
the runs in the real SQLite MLflow store (parent and nested fold runs).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.support import CONFIGS, ROOT, TINY

VARIANTS = ("threshold", "threshold+lcc", "threshold+mcs", "tta", "tta+lcc", "tta+mcs")
# the tiny network predicts low probabilities: a low threshold gives non-empty, imperfect masks
SETTINGS = dict(
    TINY, epochs=2, folds=2, image_size=32, threshold=0.01, system_metrics="false", pictures="false"
)


def _command(root: Path, *extra: str) -> list[str]:
    words = [sys.executable, "-m", "pipeline", "crossval", "--bundle_root", str(root)]
    for key, value in SETTINGS.items():
        words += [f"--{key}", str(value).lower() if isinstance(value, bool) else str(value)]
    return words + list(extra)


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(ROOT))


@pytest.fixture(scope="module")
def crossval(tmp_path_factory, tiny_phantom):
    root = tmp_path_factory.mktemp("crossval")
    shutil.copytree(tiny_phantom, root / "outputs" / "phantom_lgg")
    runs = root / "outputs" / "runs"
    started = time.monotonic()
    first = subprocess.Popen(
        _command(root),
        cwd=ROOT,
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    while first.poll() is None and not list(runs.glob("*-fold0/models/checkpoint_epoch=1.pt")):
        if time.monotonic() - started > 300:
            break
        time.sleep(0.05)
    killed = first.poll() is None
    os.killpg(first.pid, signal.SIGKILL)  # the driver and its fold training
    first.wait()
    fold0 = next(runs.glob("*-fold0"))
    interrupted = not (fold0 / "models" / "checkpoint_epoch=2.pt").exists()
    run_id = json.loads((fold0 / "mlflow_run.json").read_text())["run_id"]
    resumed = subprocess.run(
        _command(root, "--resume", "true"), cwd=ROOT, env=_env(), capture_output=True, text=True
    )
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    print(f"cross-validation with a kill: {time.monotonic() - started:.0f} s")
    return {
        "root": root,
        "fold0": fold0,
        "killed": killed and interrupted,
        "run_id": run_id,
        "resumed": resumed,
    }


@pytest.mark.slow
def test_a_killed_fold_continues_its_own_run(crossval):
    from mlflow import MlflowClient

    assert crossval["killed"], "fold 0 finished before the kill: make it longer"
    record = json.loads((crossval["fold0"] / "mlflow_run.json").read_text())
    assert record["run_id"] == crossval["run_id"]  # the same MLflow run, continued
    client = MlflowClient(tracking_uri=record["tracking_uri"])
    history = client.get_metric_history(record["run_id"], "train_loss")
    assert sorted({m.step for m in history}) == [1, 2]
    assert client.get_run(record["run_id"]).info.status == "FINISHED"
    output = crossval["resumed"].stdout + crossval["resumed"].stderr
    assert "Resumed from" in output and "checkpoint_epoch=1.pt" in output


def _dice(pred: np.ndarray, truth: np.ndarray) -> float | None:
    total = int(pred.sum()) + int(truth.sum())
    return None if total == 0 else 2.0 * int(np.logical_and(pred, truth).sum()) / total


@pytest.mark.slow
def test_every_patient_is_scored_out_of_fold_and_the_pooled_dice_is_the_masks(crossval):
    root = crossval["root"]
    (fold_file,) = (root / "outputs" / "splits").glob("*.folds2.json")
    folds = json.loads(fold_file.read_text())["folds"]
    patients = sorted(p.name for p in (root / "outputs" / "phantom_lgg").iterdir() if p.is_dir())
    assert sorted(folds[0] + folds[1]) == patients and not set(folds[0]) & set(folds[1])
    (pooled_file,) = (root / "outputs" / "crossval").glob("*/summary.json")
    pooled = json.loads(pooled_file.read_text())
    assert [c["patient"] for c in pooled["cases"]] == patients
    nontrivial = 0
    for case in pooled["cases"]:
        fold = case["fold"]
        split = json.loads((fold_file.with_suffix("") / f"fold{fold}.json").read_text())
        assert case["patient"] in folds[fold] and case["patient"] in split["val"]
        assert case["patient"] not in split["train"]  # scored by the model that did not see it
        assert f"-fold{fold}/models/model.pt" in case["checkpoint"]
        with np.load(case["masks"]) as masks:
            truth = masks["truth"]
            assert masks["slices"].tolist() == case["slices"]
            for variant in VARIANTS:
                expected = _dice(masks[variant], truth)
                got = case["metrics"][variant]["dice"]
                assert (got is None) == (expected is None) and (got is None or abs(got - expected) < 1e-9)
                nontrivial += expected is not None and 0 < expected < 1
    assert nontrivial > 0, "every mask is empty or perfect: the comparison would be trivial"
    for variant in VARIANTS:
        values = [c["metrics"][variant]["dice"] for c in pooled["cases"]]
        defined = np.array([v for v in values if v is not None])
        dice = pooled["aggregates"][variant]["dice"]
        assert dice["mean"] == pytest.approx(defined.mean()) and dice["median"] == pytest.approx(
            np.median(defined)
        )
        low, high = dice["mean_ci95"]
        assert low <= dice["mean"] <= high
    assert (
        "Out-of-fold per-patient Dice, 2-fold cross-validation over 4 patients" in crossval["resumed"].stdout
    )
    assert (pooled_file.parent / "per_patient_dice.png").stat().st_size > 1000


@pytest.mark.slow
def test_fold_runs_are_nested_in_a_parent_run_holding_the_pooled_results(crossval):
    from mlflow import MlflowClient

    root = crossval["root"]
    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'outputs' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("lgg-segmentation")
    runs = client.search_runs([experiment.experiment_id])
    (parent,) = [r for r in runs if r.data.tags.get("crossval_role") == "parent"]
    children = sorted(
        (r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id),
        key=lambda r: r.data.tags["fold"],
    )
    assert [r.data.tags["fold"] for r in children] == ["0", "1"]
    assert [r.info.run_name for r in children] == [f"{parent.info.run_name}-fold{i}" for i in (0, 1)]
    assert {r.info.run_id for r in runs} == {parent.info.run_id, *(r.info.run_id for r in children)}
    assert all(r.info.status == "FINISHED" for r in runs)
    (pooled_file,) = (root / "outputs" / "crossval").glob("*/summary.json")
    pooled = json.loads(pooled_file.read_text())
    for variant in VARIANTS:
        name = variant.replace("+", "_")
        dice = pooled["aggregates"][variant]["dice"]
        assert parent.data.metrics[f"eval_{name}_dice_mean"] == pytest.approx(dice["mean"])
        assert parent.data.metrics[f"eval_{name}_dice_mean_ci95_low"] == pytest.approx(dice["mean_ci95"][0])
        steps = client.get_metric_history(parent.info.run_id, f"fold_{name}_dice_mean")
        means = [f["mean"] for f in pooled["aggregates"][variant]["fold_dice"]]
        assert [m.value for m in sorted(steps, key=lambda m: m.step)] == pytest.approx(means)
    # each fold's own evaluation went to its own (child) run
    for child in children:
        assert "eval_threshold_dice_mean" in child.data.metrics
    listed = {a.path for a in client.list_artifacts(parent.info.run_id, "crossval")}
    assert {"crossval/summary.json", "crossval/per_patient_dice.png"} <= listed


def test_crossval_json_alone_needs_a_fold_and_the_fold_s_run_name(bundle_with_phantom):
    from monai.bundle import ConfigWorkflow

    def initialize(**overrides) -> list[BaseException]:
        workflow = ConfigWorkflow(
            config_file=[str(CONFIGS / "train.json"), str(CONFIGS / "crossval.json")],
            logging_file=False,
            workflow_type="train",
            **dict(TINY, bundle_root=str(bundle_with_phantom), folds=2, **overrides),
        )
        with pytest.raises(Exception) as info:  # MONAI wraps it: "Failed to evaluate ConfigExpression"
            workflow.initialize()
        chain, error = [], info.value
        while error is not None:
            chain.append(error)
            error = error.__cause__
        return chain

    chain = initialize()
    assert any(
        isinstance(e, ValueError) and "trains one fold per run: pass --fold I (0 to 1)" in str(e)
        for e in chain
    )
    chain = initialize(fold=1, run_name="mine")
    assert any("--run_name mine: with crossval.json fold 1's run is named" in str(e) for e in chain), chain
    assert not (bundle_with_phantom / "outputs" / "runs").exists()  # refused before any run folder


@pytest.mark.parametrize(
    ("words", "message"),
    [
        (["--run_name", "x"], "--run_name does not apply"),
        (["--split_file", "s.json"], "--split_file does not apply"),
        (["epochs", "2"], "'epochs' is not a --key value pair"),
        (["--epochs"], "--epochs has no value"),
        (["--folds", "2", "--fold", "2"], "--fold must be a fold from 0 to 1"),
        (["--folds", "1"], "--folds must be a whole number >= 2, not 1"),
    ],
)
def test_crossval_command_refuses_bad_arguments_with_the_fix(tmp_path, caplog, words, message):
    from pipeline.cli import main

    assert main(["crossval", "--bundle_root", str(tmp_path), *words]) == 1
    assert message in caplog.text
    assert not (tmp_path / "outputs" / "runs").exists()


def test_interrupted_or_changed_folds_are_refused_before_any_work(tmp_path):
    from pipeline.evaluation.crossval import check_folds
    from pipeline.evaluation.crossval_plan import CrossvalPlan, config_files, parse_overrides

    words = [w for key, value in SETTINGS.items() for w in (f"--{key}", str(value))]
    plan = CrossvalPlan(config_files(None), parse_overrides(["--bundle_root", str(tmp_path), *words]))
    assert plan.name == "cv2-phantom_lgg-unet-f2-s32-e2" and plan.folds == 2
    assert [plan.state(i) for i in (0, 1)] == ["new", "new"]
    check_folds(plan, [0, 1], resume=False)
    models = plan.run_dir(0) / "models"
    models.mkdir(parents=True)
    assert plan.state(0) == "empty"
    (models / "checkpoint_epoch=1.pt").write_bytes(b"")
    (plan.run_dir(0) / "config.json").write_text(json.dumps(plan.merged(0)))
    assert plan.state(0) == "interrupted"
    with pytest.raises(
        ValueError, match="fold 0's run .* was interrupted before it finished: pass --resume true"
    ):
        check_folds(plan, [0, 1], resume=False)
    check_folds(plan, [1], resume=False)  # fold 1 alone: fine
    check_folds(plan, [0, 1], resume=True)
    (models / "checkpoint_epoch=2.pt").write_bytes(b"")
    (models / "final.pt").write_bytes(b"")
    assert plan.state(0) == "trained"
    recorded = dict(plan.merged(0), epochs=3, resume=True)  # resume may differ, epochs may not
    (plan.run_dir(0) / "config.json").write_text(json.dumps(recorded))
    with pytest.raises(ValueError, match=r"trained with other settings than this command \(epochs: 3 -> 2\)"):
        check_folds(plan, [1], resume=True)


def test_folds_starting_together_agree_on_one_parent_run(mlflow_client):
    """Four folds look for the parent at once, each with its own client of one SQLite store."""
    import threading

    from mlflow import MlflowClient

    from pipeline.training.crossval_fold import find_or_create_parent, parent_tags

    uri = mlflow_client.tracking_uri
    experiment = mlflow_client.create_experiment("crossval-race")
    crossval = {"name": "cv4-race", "folds": 4, "fold_file": "f.json"}
    barrier, found, errors = threading.Barrier(4), [], []

    def fold() -> None:
        client = MlflowClient(tracking_uri=uri)
        barrier.wait()
        try:
            found.append(find_or_create_parent(client, experiment, crossval))
        except Exception as error:  # reported below, with the others' results
            errors.append(error)

    threads = [threading.Thread(target=fold) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and len(found) == 4 and len(set(found)) == 1, (errors, found)
    active = mlflow_client.search_runs([experiment], filter_string="tags.crossval = 'cv4-race'")
    assert [r.info.run_id for r in active] == found[:1]
    assert active[0].data.tags["crossval_role"] == "parent" and active[0].info.run_name == "cv4-race"
    time.sleep(0.01)
    mlflow_client.create_run(experiment, run_name="cv4-race", tags=parent_tags(crossval))  # a later one
    assert find_or_create_parent(mlflow_client, experiment, crossval) == found[0]  # the oldest wins


def test_the_logged_commands_paste_back_into_the_same_words():
    import shlex

    from pipeline.evaluation.crossval import shell_words

    command = [
        "python",
        "-m",
        "monai.bundle",
        "--config_file",
        "['a b.json','c.json']",
        "--network_def#depth",
        "3",
    ]
    command += ["--dataset_dir", "/data/my scans", "--note", "it's $HOME", "#x", "--k", 'say "hi"']
    line = shell_words(command)
    assert shlex.split(line) == command
    assert "--config_file \"['a b.json','c.json']\" --network_def#depth 3" in line
