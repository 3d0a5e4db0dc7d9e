"""Tests of pipeline.data.folds and pipeline.data.fold_data: stratified, disjoint, covering folds,
written once and reused, and refused when they leak or no longer match the data."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from pipeline.data.discovery import DatasetError
from pipeline.data.folds import (
    FoldError,
    assign_folds,
    check_folds_setting,
    load_or_create_folds,
    write_fold_split,
)
from tests.pipeline.data.support import make_patient

PATIENTS = [f"TCGA_CS_{4900 + i}_19960909" for i in range(13)]


def volumes(n: int = 13, free: int = 0) -> dict[str, int]:
    """``free`` lesion-free patients, then lesion volumes 10, 20, 30, ... (made up)."""
    return {f"P{i:02d}": 0 if i < free else 10 * (i - free + 1) for i in range(n)}


@pytest.mark.parametrize(("n", "k"), [(13, 5), (10, 2), (110, 22), (40, 5), (7, 7)])
def test_folds_are_disjoint_cover_every_patient_once_and_balanced(n: int, k: int) -> None:
    lesions = volumes(n, free=n // 6)
    folds = assign_folds(lesions, k, seed=0)
    assert len(folds) == k
    every = [p for fold in folds for p in fold]
    assert sorted(every) == sorted(lesions)  # each patient once: disjoint and covering
    sizes = [len(f) for f in folds]
    assert max(sizes) - min(sizes) <= 1 and min(sizes) >= 1


def test_every_fold_has_small_and_large_lesions_by_hand() -> None:
    # 10 patients with volumes 10..100, 5 folds: strata {10..50} and {60..100}, one of each per fold
    lesions = volumes(10)
    for seed in range(5):
        for fold in assign_folds(lesions, 5, seed=seed):
            small = [p for p in fold if lesions[p] <= 50]
            large = [p for p in fold if lesions[p] > 50]
            assert len(small) == 1 and len(large) == 1, (seed, fold)
    # 15 patients, 5 folds: one of {10..50}, one of {60..100} and one of {110..150} in each fold
    lesions = volumes(15)
    for fold in assign_folds(lesions, 5, seed=3):
        assert sorted((lesions[p] - 1) // 50 for p in fold) == [0, 1, 2]


def test_lesion_free_patients_are_spread_over_the_folds() -> None:
    lesions = volumes(13, free=3)  # P00, P01, P02 lesion-free
    for seed in range(5):
        folds = assign_folds(lesions, 5, seed=seed)
        holding = [sum(lesions[p] == 0 for p in fold) for fold in folds]
        assert sorted(holding) == [0, 0, 1, 1, 1], (seed, folds)
    lesions = volumes(12, free=7)  # more lesion-free patients than folds: 2 or 1 in each of 5
    holding = [sum(lesions[p] == 0 for p in f) for f in assign_folds(lesions, 5, seed=1)]
    assert sorted(holding) == [1, 1, 1, 2, 2]


def test_folds_are_seeded() -> None:
    lesions = volumes(20)
    assert assign_folds(lesions, 4, seed=1) == assign_folds(lesions, 4, seed=1)
    assert assign_folds(lesions, 4, seed=1) != assign_folds(lesions, 4, seed=2)


@pytest.mark.parametrize(
    ("folds", "fold", "message"),
    [
        (1, "any", "--folds must be a whole number >= 2, not 1"),
        ("5", "any", "not the string '5': pass it without quotes (--folds 5)"),
        (5, None, "pass --fold I (0 to 4)"),
        (5, 5, "--fold must be a whole number from 0 to 4 (--folds 5), not 5"),
        (14, "any", "--folds 14 is more than the 13 patients"),
    ],
)
def test_bad_fold_settings_are_refused_with_the_fix(folds, fold, message) -> None:
    with pytest.raises(ValueError) as info:
        check_folds_setting(folds, fold, n_patients=13)
    assert message in str(info.value)


def _create(path: Path, **kwargs) -> dict:
    lesions = {p: 10 * (i + 1) for i, p in enumerate(PATIENTS)}
    return load_or_create_folds(PATIENTS, lambda: lesions, path, kwargs.pop("folds", 5), **kwargs)


def test_fold_file_written_once_readable_and_reused(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "splits" / "data-1234.folds5.json"
    first = _create(path, seed=0, fingerprint="abc")
    text = path.read_text()
    record = json.loads(text)
    assert record["folds"] == first["folds"] and record["k"] == 5 and record["dataset_fingerprint"] == "abc"
    assert record["lesion_voxels"][PATIENTS[2]] == 30
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left

    def never() -> dict:
        raise AssertionError("a reused fold file reads no mask")

    with caplog.at_level(logging.INFO, logger="pipeline.data.folds"):
        again = load_or_create_folds(PATIENTS, never, path, 5, seed=99, fingerprint="abc")
    assert again["folds"] == first["folds"] and again["seed"] == 0
    assert "Reusing the fold file" in caplog.text and path.read_text() == text


def _edit(path: Path, change) -> str:
    record = json.loads(path.read_text())
    change(record)
    path.write_text(json.dumps(record))
    return path.read_text()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda r: r["folds"][1].append(r["folds"][0][0]), "puts 1 patients in more than one fold"),
        (
            lambda r: r["folds"][0].append("TCGA_XX_0000_20000101"),
            "names 1 patients that are not in the dataset",
        ),
        (lambda r: r["folds"][0].pop(), "is stale: 1 patients of the dataset are in no fold"),
        (lambda r: r["folds"].pop(), "holds 4 folds, but --folds is 5: pass --folds 4"),
        (lambda r: r.update(dataset_fingerprint="other"), "fingerprint other; this dataset's files give abc"),
        (lambda r: r.update(folds="P1"), "is malformed"),
    ],
)
def test_fold_file_refused_when_it_leaks_or_does_not_match(tmp_path: Path, change, message) -> None:
    path = tmp_path / "f.folds5.json"
    _create(path, fingerprint="abc")
    text = _edit(path, change)
    with pytest.raises(FoldError) as info:
        _create(path, fingerprint="abc")
    assert message in str(info.value) and f"Delete {path}" in str(info.value)
    assert isinstance(info.value, DatasetError)
    assert path.read_text() == text  # nothing rewritten


def test_patient_in_two_folds_is_named(tmp_path: Path) -> None:
    path = tmp_path / "f.folds5.json"
    folds = _create(path)["folds"]
    twice = folds[0][0]
    _edit(path, lambda r: r["folds"][3].append(twice))
    with pytest.raises(FoldError, match=f"{twice} in folds 0, 3"):
        _create(path)


def test_fold_split_is_the_fold_and_the_rest_and_is_checked(tmp_path: Path) -> None:
    dealt = _create(tmp_path / "f.folds5.json")
    split_file = tmp_path / "f.folds5" / "fold2.json"
    write_fold_split(split_file, dealt, 2)
    split = json.loads(split_file.read_text())
    assert split["val"] == sorted(dealt["folds"][2])
    assert split["train"] == sorted(p for i in (0, 1, 3, 4) for p in dealt["folds"][i])
    assert split["fold"] == 2 and split["folds"] == 5 and split["n_val"] == len(split["val"])
    write_fold_split(split_file, dealt, 2)  # the same again: accepted
    moved = dict(dealt, folds=[dealt["folds"][1], dealt["folds"][0], *dealt["folds"][2:]])
    write_fold_split(split_file, moved, 2)  # fold 2 itself unchanged: accepted
    other = dict(dealt, folds=[dealt["folds"][2], dealt["folds"][1], dealt["folds"][0], *dealt["folds"][3:]])
    before = split_file.read_text()
    with pytest.raises(FoldError, match="does not match the fold file"):
        write_fold_split(split_file, other, 2)
    assert split_file.read_text() == before


def test_prepare_fold_data_validates_on_the_fold(tmp_path: Path) -> None:
    from pipeline.data.fold_data import fold_split_file, lesion_voxels, prepare_fold_data

    root = tmp_path / "data"
    names = [f"TCGA_CS_{4900 + i}_19960909" for i in range(6)]
    for i, name in enumerate(names):
        make_patient(root, name, n_slices=2 + i % 3, lesion=i != 4)
    fold_file = tmp_path / "splits" / "data-x.folds3.json"
    split_file = fold_split_file(fold_file, 1)
    prepared = prepare_fold_data(str(root), str(split_file), str(fold_file), 3, 1, str(tmp_path / "phantom"))
    folds = json.loads(fold_file.read_text())["folds"]
    assert prepared.val_patients == folds[1]
    assert prepared.train_patients == sorted(folds[0] + folds[2])
    # make_patient's slice k holds k lesion pixels: a patient of 3 slices has 1 + 2 + 3 = 6
    assert json.loads(fold_file.read_text())["lesion_voxels"][names[1]] == 6
    assert lesion_voxels(prepared.val + prepared.train)[names[4]] == 0
    with pytest.raises(ValueError, match="--n_val 2 does not apply to cross-validation"):
        prepare_fold_data(str(root), str(split_file), str(fold_file), 3, 1, str(tmp_path / "p"), n_val=2)
    with pytest.raises(ValueError, match="drop --split_file"):
        prepare_fold_data(str(root), str(tmp_path / "mine.json"), str(fold_file), 3, 1, str(tmp_path / "p"))
    with pytest.raises(ValueError, match="pass --fold I"):
        prepare_fold_data(str(root), str(split_file), str(fold_file), 3, None, str(tmp_path / "p"))
