"""pipeline.training.model_settings: a checkpoint's training settings, read from its run folder."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import pytest
import torch

from networks import UNet
from pipeline.training.model_settings import (
    build_network,
    check_image_size,
    load_network,
    run_config_file,
    trained_settings,
)
from pipeline.training.run_data import run_dataset, run_split_file

ROOT = Path(__file__).resolve().parents[3]
TRAIN = json.loads((ROOT / "bundle" / "configs" / "train.json").read_text())


def _run_folder(root: Path, name: str = "r", **overrides) -> Path:
    """A run folder as training leaves it: config.json (train.json with ``overrides``) and
    models/model.pt of a UNet(n_filters=2, depth=3), under ``<root>/outputs/runs/<name>``."""
    config = json.loads(json.dumps(TRAIN))
    config["network_def"].update(n_filters=2, depth=3, dropout=0.0)
    config.update({"image_size": 64, "bundle_root": str(root)}, **overrides)
    run = root / "outputs" / "runs" / name
    (run / "models").mkdir(parents=True)
    (run / "config.json").write_text(json.dumps(config))
    torch.manual_seed(0)
    torch.save(UNet(n_filters=2, depth=3).state_dict(), run / "models" / "model.pt")
    return run


def _callable(**given):
    """What MONAI makes of the configs' network_def (``_mode_`` "callable", nulls but ``given``)."""
    from functools import partial

    arguments = dict.fromkeys(("channels_in", "n_classes", "depth", "n_filters", "dropout", "init"))
    return partial(UNet, **{**arguments, **given})


def test_the_run_config_is_found_beside_every_checkpoint_of_a_run(tmp_path):
    run = _run_folder(tmp_path)
    for name in ("model.pt", "checkpoint_epoch=3.pt", "final.pt"):
        assert run_config_file(run / "models" / name) == run / "config.json"
    assert run_config_file(run / "checkpoints" / "checkpoint_epoch=3.pt") == run / "config.json"
    assert run_config_file(run / "model.pt") == run / "config.json"
    assert run_config_file(tmp_path / "elsewhere" / "model.pt") is None


def test_an_exported_bundle_gives_its_train_json_only_when_its_metadata_records_the_network(tmp_path):
    bundle = tmp_path / "lgg_unet"
    (bundle / "configs").mkdir(parents=True)
    (bundle / "configs" / "train.json").write_text(json.dumps(TRAIN))
    (bundle / "configs" / "metadata.json").write_text(json.dumps({"name": "x"}))
    assert run_config_file(bundle / "models" / "model.pt") is None  # not an export of ours
    (bundle / "configs" / "metadata.json").write_text(json.dumps({"network_settings": {"depth": 3}}))
    assert run_config_file(bundle / "models" / "model.pt") == bundle / "configs" / "train.json"
    (bundle / "models").mkdir()
    torch.save({}, bundle / "models" / "model.pt")
    trained = trained_settings(bundle / "models" / "model.pt")
    assert trained.config_file == str(bundle / "configs" / "train.json") and trained.run_dir is None
    assert trained.trained_image_size == TRAIN["image_size"] and run_dataset(trained) is None


def test_settings_network_image_size_and_data_come_from_the_run(tmp_path):
    run = _run_folder(tmp_path)
    trained = trained_settings(run / "models" / "model.pt")
    assert trained.config_file == str(run / "config.json") and trained.from_run
    assert trained.network == {
        "_target_": "networks.UNet",
        "channels_in": 3,
        "n_classes": 1,
        "depth": 3,
        "n_filters": 2,
        "dropout": 0.0,
        "init": "he",
    }
    assert (trained.image_size, trained.trained_image_size) == (64, 64)
    # train.json's defaults: <bundle_root>/outputs/phantom_lgg and its split, named by a hash of its path
    dataset = tmp_path / "outputs" / "phantom_lgg"
    digest = hashlib.sha256(str(dataset.resolve()).encode()).hexdigest()[:8]
    assert run_dataset(trained) == str(dataset)
    split = str(tmp_path / "outputs" / "splits" / f"phantom_lgg-{digest}.json")
    assert run_split_file(trained, str(dataset) + "/") == split
    assert run_split_file(trained, tmp_path / "other") is None  # another folder: its own split


def test_a_relative_output_root_is_the_run_folders_wherever_the_evaluation_starts(tmp_path, monkeypatch):
    """A run trained with bundle_root "." (make demo) and evaluated from another directory."""
    run = _run_folder(tmp_path, bundle_root=".")
    monkeypatch.chdir(tmp_path / "outputs" / "runs")  # anywhere but the training's directory
    trained = trained_settings(run / "models" / "model.pt")
    assert run_dataset(trained) == str(tmp_path / "outputs" / "phantom_lgg")


def test_a_command_line_override_in_the_run_config_is_resolved(tmp_path):
    run = _run_folder(tmp_path, dataset_dir="/data/kaggle_3m", split_file="/data/split.json")
    trained = trained_settings(run / "models" / "model.pt")
    assert run_dataset(trained) == "/data/kaggle_3m"
    assert run_split_file(trained, "/data/kaggle_3m") == "/data/split.json"


def test_without_a_run_config_the_defaults_of_train_json_and_a_log_line(tmp_path, caplog):
    checkpoint = tmp_path / "elsewhere" / "model.pt"
    checkpoint.parent.mkdir()
    torch.save(UNet(n_filters=2, depth=3).state_dict(), checkpoint)
    with caplog.at_level(logging.INFO, logger="pipeline.training.model_settings"):
        trained = trained_settings(checkpoint)
    assert trained.config_file is None and not trained.from_run
    assert trained.network == TRAIN["network_def"]
    assert (trained.image_size, trained.trained_image_size) == (TRAIN["image_size"], None)
    assert run_dataset(trained) is None and run_split_file(trained, "/data/kaggle_3m") is None
    assert f"{checkpoint} has no run config beside it" in caplog.text and "train.json" in caplog.text


def test_a_config_json_that_is_not_a_training_config_is_ignored_with_a_warning(tmp_path, caplog):
    folder = tmp_path / "downloaded"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"architectures": ["BertModel"]}))
    torch.save(UNet(n_filters=2, depth=3).state_dict(), folder / "model.pt")
    with caplog.at_level(logging.INFO, logger="pipeline.training.model_settings"):
        trained = trained_settings(folder / "model.pt")
    assert trained.config_file is None
    assert f"{folder / 'config.json'} holds no network_def" in caplog.text


def test_a_missing_checkpoint_names_the_file_and_the_key(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"checkpoint .*nope\.pt does not exist; pass --ckpt_path"):
        trained_settings(tmp_path / "nope.pt")


def test_another_image_size_is_refused_or_warned_when_allowed(tmp_path, caplog):
    trained = trained_settings(_run_folder(tmp_path) / "models" / "model.pt")
    check_image_size(trained, 64)
    with pytest.raises(ValueError) as refused:
        check_image_size(trained, 256)
    message = str(refused.value)
    assert "was trained at 64 px" in message and "not at --image_size 256" in message
    assert "Drop --image_size to use 64 px" in message and "--allow_other_image_size true" in message
    with caplog.at_level(logging.WARNING, logger="pipeline.training.model_settings"):
        check_image_size(trained, 256, allow_other="true")  # as the bundle command line passes it
    assert "is run at 256 px" in caplog.text
    # no run config: no trained size to hold it to
    bare = tmp_path / "bare.pt"
    torch.save({}, bare)
    check_image_size(trained_settings(bare), 32)


def test_the_network_has_the_run_settings_and_explicit_values_win(tmp_path, caplog):
    run = _run_folder(tmp_path)
    trained = trained_settings(run / "models" / "model.pt")
    network = load_network(_callable(), trained, image_size=64)
    expected = torch.load(run / "models" / "model.pt", weights_only=True)
    assert network.state_dict().keys() == expected.keys()
    assert all(torch.equal(network.state_dict()[k], v) for k, v in expected.items())
    assert {m.p for m in network.modules() if isinstance(m, torch.nn.Dropout)} == {0.0}
    with caplog.at_level(logging.INFO, logger="pipeline.training.model_settings"):
        network = load_network(_callable(dropout=0.3, depth=3), trained, image_size=64)
    assert {m.p for m in network.modules() if isinstance(m, torch.nn.Dropout)} == {0.3}
    # only the value that differs from the run's is reported as given
    assert "given in the config or command line: dropout=0.3" in caplog.text
    assert "depth=3" not in caplog.text.split("given in the config or command line:")[1]


def test_a_training_checkpoint_loads_its_network(tmp_path):
    run = _run_folder(tmp_path)
    torch.manual_seed(1)
    weights = UNet(n_filters=2, depth=3).state_dict()
    torch.save({"network": weights, "optimizer": {}, "trainer": {}}, run / "models" / "checkpoint_epoch=2.pt")
    network = load_network(_callable(), trained_settings(run / "models" / "checkpoint_epoch=2.pt"))
    assert all(torch.equal(network.state_dict()[k], v) for k, v in weights.items())


def test_weights_that_fit_no_settings_name_the_keys_and_the_fix(tmp_path):
    run = _run_folder(tmp_path)
    trained = trained_settings(run / "models" / "model.pt")
    with pytest.raises(ValueError) as given:
        load_network(_callable(n_filters=3), trained)
    message = str(given.value)
    assert "does not fit the network built from the run config" in message and "with n_filters=3" in message
    assert "down.0.0.weight (4, 3, 3, 3) vs (8, 3, 3, 3)" in message
    assert message.endswith(f"Drop --network_def#n_filters 3: {run / 'config.json'} records n_filters=2.")

    # a model.pt away from its run: the weights say which settings they fit (only those to change)
    bare = tmp_path / "bare.pt"
    os.link(run / "models" / "model.pt", bare)
    with pytest.raises(ValueError) as fallback:
        load_network(_callable(), trained_settings(bare))
    message = str(fallback.value)
    assert "does not fit the network built from the defaults of" in message
    assert "missing keys" in message or "shape mismatch" in message
    assert "These weights fit channels_in=3, n_classes=1, depth=3, n_filters=2: pass " in message
    assert "pass --network_def#depth 3 --network_def#n_filters 2 (and the --image_size" in message

    # the run's model.pt replaced by another network's
    torch.save(UNet(n_filters=1, depth=2).state_dict(), run / "models" / "model.pt")
    with pytest.raises(ValueError, match=r"do not match their run's settings.*was the file replaced"):
        load_network(_callable(), trained_settings(run / "models" / "model.pt"))


def test_an_untrained_network_of_the_defaults_and_the_values_given():
    """What a benchmark without a checkpoint builds: train.json's network_def, values given win."""
    network, settings, given = build_network(_callable(n_filters=2, depth=3))
    assert isinstance(network, UNet) and given == {"n_filters": 2, "depth": 3}
    assert settings == {k: v for k, v in TRAIN["network_def"].items() if k != "_target_"} | given
    assert {m.p for m in network.modules() if isinstance(m, torch.nn.Dropout)} == {
        TRAIN["network_def"]["dropout"]
    }
    built = torch.nn.Linear(2, 1)
    assert build_network(built) == (built, {}, {})
