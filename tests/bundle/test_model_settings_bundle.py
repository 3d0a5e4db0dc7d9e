"""The model knows its settings: evaluate.json and inference.json take the network, the image size
(and evaluate.json the data) from the checkpoint's training run, with no overrides.

A tiny demo run (train.json + demo.json with the TINY recipe: 64 px, n_filters 2, depth 3, no
dropout: none of them train.json's defaults) is trained by ``python -m monai.bundle run``, then
evaluated and applied by ``python -m monai.bundle run`` as the README says.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
import torch.nn.functional as F

from networks import UNet
from tests.support import CONFIGS, ROOT, bundle_command

NVIMAGECODEC = "nvImageCodec is not available"


def _env() -> dict:
    return dict(os.environ, PYTHONPATH=str(ROOT))


def _bundle(*args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "monai.bundle", "run", *args]
    return subprocess.run(command, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600)


def _configs(*names: str) -> str:
    return "[" + ",".join(repr(str(CONFIGS / n)) for n in names) + "]"


def _last_line(text: str) -> str:
    return [line for line in text.splitlines() if line.strip()][-1]


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory, tiny_phantom):
    """(bundle root, run folder) of a 1-epoch demo-overlay training run on the tiny phantom."""
    root = tmp_path_factory.mktemp("demo")
    shutil.copytree(tiny_phantom, root / "outputs" / "phantom_demo")  # as `make demo` leaves it
    command = bundle_command(root, "demo.json", epochs=1, run_name="demo", system_metrics=False)
    done = subprocess.run(command, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return root, root / "outputs" / "runs" / "demo"


def _split(root: Path) -> dict:
    # the split file itself, not its per-patient caches (<split>.intensity.json, .head_box.json)
    (split,) = [
        p for p in (root / "outputs" / "splits").glob("phantom_demo-*.json") if p.suffixes == [".json"]
    ]
    return json.loads(split.read_text())


def _probabilities(model: Path, images: list[Path]) -> np.ndarray:
    """numpy + torch only: the demo network at 64 px, probabilities resized back (bilinear)."""
    network = UNet(n_filters=2, depth=3, dropout=0.0)
    network.load_state_dict(torch.load(model, weights_only=True))
    network.eval()
    rgb = np.stack([np.moveaxis(tifffile.imread(p), -1, 0) for p in images]).astype(np.float32)
    # train.json's default intensity, per volume, by hand: each channel's 1st..99th percentile of
    # the head voxels (brightest channel above 10% of its 99.9th percentile), applied after the resize
    brightest = rgb.max(axis=1)
    head = brightest > 0.1 * np.percentile(brightest.astype(np.float64), 99.9)
    bounds = np.array([np.percentile(rgb[:, c][head].astype(np.float64), (1, 99)) for c in range(3)])
    lo, width = bounds[:, 0].reshape(1, 3, 1, 1), (bounds[:, 1] - bounds[:, 0]).reshape(1, 3, 1, 1)
    area = F.interpolate(torch.from_numpy(rgb), size=(64, 64), mode="area").numpy()
    x = torch.from_numpy(np.clip((area - lo) / width, 0, 1).astype(np.float32))
    with torch.no_grad():
        prob = torch.sigmoid(network(x))
    return F.interpolate(prob, size=rgb.shape[-2:], mode="bilinear", align_corners=False)[:, 0].numpy()


def _voxels_at(labels: list[str], size: int) -> int:
    masks = torch.from_numpy(np.stack([tifffile.imread(p) > 127 for p in labels]).astype(np.float32))
    return int(F.interpolate(masks[:, None], size=(size, size), mode="nearest-exact").sum())


@pytest.mark.slow
def test_the_readme_evaluate_command_takes_the_runs_network_size_and_patients(demo_run):
    root, run = demo_run
    done = _bundle("--config_file", _configs("train.json", "evaluate.json"), "--bundle_root", str(root))
    assert done.returncode == 0, done.stderr[-3000:]
    [line] = [line for line in done.stdout.splitlines() if "model_settings: Model" in line]
    assert (
        f"{run / 'models' / 'model.pt'}: UNet(" in line
        and f"from the run config {run / 'config.json'}" in line
    )
    assert all(s in line for s in ("depth=3", "n_filters=2", "dropout=0.0", "image size 64 px"))
    summary = json.loads((run / "evaluation" / "summary.json").read_text())
    assert [case["patient"] for case in summary["cases"]] == _split(root)["val"]  # the run's own
    for case in summary["cases"]:  # truth counted at the evaluated size: 64 px, not train.json's 256
        assert case["metrics"]["threshold"]["true_voxels"] == _voxels_at(case["labels"], 64)
        assert _voxels_at(case["labels"], 64) != _voxels_at(case["labels"], 256)
    assert not (root / "outputs" / "phantom_lgg").exists()  # train.json's default data: not made


@pytest.fixture(scope="module")
def inferred(demo_run, tmp_path_factory):
    """inference.json with --ckpt_path, --dataset_dir, --output_dir and --threshold only, on the
    validation patient's slices. The run folder is copied with random weights of its network in
    models/model.pt: a 1-epoch model's probabilities are nearly constant, these vary, and a
    threshold at their 70% quantile makes masks that say something."""
    root, run = demo_run
    patient = _split(root)["val"][0]
    scans = tmp_path_factory.mktemp("scans")
    images = sorted(
        p for p in (root / "outputs" / "phantom_demo" / patient).glob("*.tif") if "_mask" not in p.name
    )
    (scans / patient).mkdir()
    for path in images:
        shutil.copy(path, scans / patient / path.name)
    copy = scans.parent / (scans.name + "-run")
    (copy / "models").mkdir(parents=True)
    shutil.copy(run / "config.json", copy / "config.json")
    torch.manual_seed(0)
    torch.save(UNet(n_filters=2, depth=3).state_dict(), copy / "models" / "model.pt")
    probabilities = _probabilities(copy / "models" / "model.pt", images)
    threshold = float(np.quantile(probabilities, 0.7))
    out = scans.parent / (scans.name + "-masks")
    done = _bundle(
        "--config_file",
        str(CONFIGS / "inference.json"),
        "--ckpt_path",
        str(copy / "models" / "model.pt"),
        "--dataset_dir",
        str(scans),
        "--output_dir",
        str(out),
        "--threshold",
        repr(threshold),
    )
    return done, images, probabilities, threshold, out / patient


@pytest.mark.slow
def test_inference_takes_the_runs_network_and_size(inferred):
    done, images, probabilities, threshold, out = inferred
    assert done.returncode == 0, done.stderr[-3000:]
    [line] = [line for line in done.stdout.splitlines() if "model_settings: Model" in line]
    assert all(s in line for s in ("depth=3", "n_filters=2", "dropout=0.0", "image size 64 px"))
    masks = np.stack([tifffile.imread(out / f"{p.stem}_mask.tif") > 0 for p in images])
    decided = np.abs(probabilities - threshold) > 1e-4
    assert decided.mean() > 0.5 and 0.05 < (probabilities > threshold).mean() < 0.95
    np.testing.assert_array_equal(masks[decided], (probabilities > threshold)[decided])


@pytest.mark.slow
def test_monai_s_nvimagecodec_message_is_not_shown(inferred, tmp_path):
    done = inferred[0]
    assert done.returncode == 0, done.stderr[-3000:]
    assert "nvImageCodec" not in done.stdout + done.stderr
    # the control: this environment does emit it, under a logging.conf without our section
    conf = (CONFIGS / "logging.conf").read_text().replace("keys=root,ignite,nvimgcodec", "keys=root,ignite")
    (tmp_path / "logging.conf").write_text(conf)
    code = (
        "import logging.config, sys; logging.config.fileConfig(sys.argv[1]); "
        "from monai.transforms import LoadImaged; LoadImaged(keys='image')"
    )
    for path, shown in ((tmp_path / "logging.conf", True), (CONFIGS / "logging.conf", False)):
        control = subprocess.run(
            [sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=300
        )
        assert control.returncode == 0, control.stderr[-2000:]
        assert (NVIMAGECODEC in control.stdout + control.stderr) is shown, (path, control.stdout)


@pytest.mark.slow
@pytest.mark.parametrize("case", ["other network", "no run config", "other image size"])
def test_a_checkpoint_that_fits_no_settings_fails_before_any_data(demo_run, tmp_path, case):
    """The dataset folder does not exist: reading it first would fail on that instead."""
    root, run = demo_run
    missing = tmp_path / "not_there_yet"
    model = run / "models" / "model.pt"
    if case == "other network":
        args = ["--config_file", str(CONFIGS / "inference.json"), "--ckpt_path", str(model)]
        args += ["--network_def#n_filters", "3"]
        expected = [
            f"ValueError: {model} does not fit the network built from the run config {run / 'config.json'}",
            "down.0.0.weight (4, 3, 3, 3) vs (8, 3, 3, 3)",
            f"Drop --network_def#n_filters 3: {run / 'config.json'} records n_filters=2.",
        ]
    elif case == "no run config":
        bare = tmp_path / "elsewhere" / "model.pt"
        bare.parent.mkdir()
        shutil.copy(model, bare)
        args = ["--config_file", _configs("train.json", "evaluate.json"), "--bundle_root", str(root)]
        args += ["--ckpt_path", str(bare)]
        defaults = CONFIGS / "train.json"
        expected = [
            f"ValueError: {bare} does not fit the network built from the defaults of {defaults}",
            "pass --network_def#depth 3 --network_def#n_filters 2 (and the --image_size it was trained at)",
        ]
    else:
        args = [
            "--config_file",
            str(CONFIGS / "inference.json"),
            "--ckpt_path",
            str(model),
            "--image_size",
            "128",
        ]
        expected = [
            f"ValueError: {model} was trained at 64 px ({run / 'config.json'}), not at --image_size 128",
            "Drop --image_size to use 64 px, or pass --allow_other_image_size true",
        ]
    done = _bundle(*args, "--dataset_dir", str(missing))
    assert done.returncode != 0
    last = _last_line(done.stderr)
    assert last.startswith(expected[0]) and all(part in last for part in expected[1:]), done.stderr[-3000:]
    assert "Found" not in done.stdout and "Data:" not in done.stdout  # no input was looked for


def _workflow(configs: list[str], root: Path, **overrides):
    from monai.bundle import ConfigWorkflow

    workflow = ConfigWorkflow(
        config_file=[str(CONFIGS / c) for c in configs],
        meta_file=str(CONFIGS / "metadata.json"),
        logging_file=False,
        workflow_type=None,
        bundle_root=str(root),
        **overrides,
    )
    workflow.initialize()
    return workflow


@pytest.mark.slow
@pytest.mark.parametrize("checkpoint", ["checkpoint_epoch=1.pt", "final.pt", None])
@pytest.mark.parametrize("configs", [["inference.json"], ["train.json", "evaluate.json"]])
def test_training_checkpoints_and_the_newest_model_take_the_run_settings(demo_run, configs, checkpoint):
    root, run = demo_run
    overrides = {} if checkpoint is None else {"ckpt_path": str(run / "models" / checkpoint)}
    workflow = _workflow(configs, root, **overrides)
    network = workflow.parser.get_parsed_content("network")
    saved = torch.load(run / "models" / (checkpoint or "model.pt"), weights_only=True)
    saved = saved.get("network", saved)
    assert saved.keys() == network.state_dict().keys()
    assert all(torch.equal(network.state_dict()[k].cpu(), v) for k, v in saved.items())
    assert workflow.parser.get_parsed_content("image_size") == 64


@pytest.mark.slow
def test_explicit_values_win_and_another_size_runs_only_when_allowed(demo_run, caplog):
    root, run = demo_run
    image = next((root / "outputs" / "phantom_demo").glob("*/*_1.tif"))
    with caplog.at_level(logging.INFO, logger="pipeline.training.model_settings"):
        workflow = _workflow(
            ["inference.json"],
            root,
            ckpt_path=str(run / "models" / "model.pt"),
            image_size=32,
            allow_other_image_size=True,
            **{"network_def#dropout": 0.5},
        )
    network = workflow.parser.get_parsed_content("network")
    assert {m.p for m in network.modules() if isinstance(m, torch.nn.Dropout)} == {0.5}  # the run's: 0.0
    assert "was trained at 64 px" in caplog.text and "is run at 32 px" in caplog.text
    assert "given in the config or command line: dropout=0.5" in caplog.text
    bounds = [[0.0, 255.0]] * 3  # the run's intensity is train.json's default, per volume
    prepared = workflow.parser.get_parsed_content("preprocessing")(
        {"image": str(image), "intensity": bounds}
    )["image"]
    assert tuple(prepared.shape) == (3, 32, 32)
