"""Tests of pipeline.data.splits: scaling, persistence and the refusals of a mismatched split file."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from pipeline.data.discovery import DatasetError
from pipeline.data.splits import SplitError, default_n_val, load_or_create_split

PATIENTS = [f"TCGA_CS_{4900 + i}_19960909" for i in range(20)]


def write_split(path: Path, train: list[str], val: list[str]) -> None:
    path.write_text(json.dumps({"train": train, "val": val, "seed": 0, "n_val": len(val)}))


def test_default_n_val_scales_the_tutorial() -> None:
    assert default_n_val(110) == 30
    assert default_n_val(20) == 5
    assert default_n_val(2) == 1
    assert default_n_val(3) == 1
    assert default_n_val(1000) == 273
    with pytest.raises(ValueError, match="n_patients must be an integer >= 2"):
        default_n_val(1)


def test_new_split_written_readable(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "deep" / "er" / "split.json"
    split = load_or_create_split(PATIENTS[::-1], path, seed=3)
    assert split["n_val"] == len(split["val"]) == 5 and split["seed"] == 3
    assert split["train"] == sorted(split["train"]) and split["val"] == sorted(split["val"])
    assert not set(split["train"]) & set(split["val"])
    assert sorted(split["train"] + split["val"]) == PATIENTS
    text = path.read_text()
    assert json.loads(text) == split
    assert text.startswith('{\n  "n_val": 5,\n  "seed": 3,\n  "train": [')  # indent 2, sorted keys
    assert [p.name for p in path.parent.iterdir()] == ["split.json"]  # no temporary file left


def test_seeded_and_scaled(tmp_path: Path) -> None:
    a = load_or_create_split(PATIENTS, tmp_path / "a.json", seed=1)
    b = load_or_create_split(PATIENTS, tmp_path / "b.json", seed=1)
    c = load_or_create_split(PATIENTS, tmp_path / "c.json", seed=2)
    assert a == b and a["val"] != c["val"]
    many = [f"P{i:03d}" for i in range(110)]
    assert len(load_or_create_split(many, tmp_path / "d.json")["val"]) == 30
    assert len(load_or_create_split(many, tmp_path / "e.json", n_val=11)["val"]) == 11


def test_second_call_reuses_the_file(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "split.json"
    first = load_or_create_split(PATIENTS, path, seed=0)
    with caplog.at_level(logging.INFO, logger="pipeline.data.splits"):
        again = load_or_create_split(PATIENTS, path, seed=99)
    assert again == first and again["seed"] == 0
    assert "Reusing the split" in caplog.text
    assert load_or_create_split(PATIENTS, path, n_val=5) == first


def test_hand_edited_split_reused(tmp_path: Path) -> None:
    path = tmp_path / "split.json"
    write_split(path, PATIENTS[2:], PATIENTS[:2])
    split = load_or_create_split(PATIENTS, path)
    assert split["val"] == PATIENTS[:2] and split["n_val"] == 2


def test_patient_in_both_sets_refused(tmp_path: Path) -> None:
    path = tmp_path / "split.json"
    write_split(path, PATIENTS[1:], PATIENTS[:2])
    with pytest.raises(SplitError, match=f"both train and val \\({PATIENTS[1]}\\).*leaks") as err:
        load_or_create_split(PATIENTS, path)
    assert str(path) in str(err.value) and "Delete" in str(err.value)
    assert isinstance(err.value, DatasetError)


def test_unknown_patient_refused(tmp_path: Path) -> None:
    path = tmp_path / "split.json"
    write_split(path, PATIENTS[3:] + ["TCGA_XX_0000_20000101"], PATIENTS[:3])
    with pytest.raises(SplitError, match=r"not in the dataset \(TCGA_XX_0000_20000101\)") as err:
        load_or_create_split(PATIENTS, path)
    assert str(path) in str(err.value) and "another split file" in str(err.value)


def test_stale_split_refused(tmp_path: Path) -> None:
    path = tmp_path / "split.json"
    load_or_create_split(PATIENTS, path)
    with pytest.raises(SplitError, match="stale: 1 patients.*TCGA_ZZ_9999_20000101"):
        load_or_create_split(PATIENTS + ["TCGA_ZZ_9999_20000101"], path)


@pytest.mark.parametrize(
    "text, message",
    [
        ("{not json", "cannot read the split file"),
        ('["a", "b"]', "malformed"),
        ('{"train": ["a"], "val": "b"}', "malformed"),
        ('{"train": [1], "val": ["b"]}', "malformed"),
    ],
)
def test_malformed_file_refused(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "split.json"
    path.write_text(text)
    with pytest.raises(SplitError, match=message):
        load_or_create_split(PATIENTS, path)
    assert path.read_text() == text  # never overwritten


def test_n_val_mismatch_refused(tmp_path: Path) -> None:
    path = tmp_path / "split.json"
    load_or_create_split(PATIENTS, path, n_val=4)
    with pytest.raises(SplitError, match="n_val is 6 but the split file .* holds 4"):
        load_or_create_split(PATIENTS, path, n_val=6)


@pytest.mark.parametrize("n_val", [0, 20, -1, 2.5, True])
def test_n_val_range(tmp_path: Path, n_val: object) -> None:
    with pytest.raises(ValueError, match="n_val must be"):
        load_or_create_split(PATIENTS, tmp_path / "split.json", n_val=n_val)
    assert not (tmp_path / "split.json").exists()


def test_too_few_patients_or_bad_seed(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least 2 distinct patients"):
        load_or_create_split(["A", "A"], tmp_path / "split.json")
    with pytest.raises(ValueError, match="seed must be at least 0, not -1"):
        load_or_create_split(PATIENTS, tmp_path / "split.json", seed=-1)
