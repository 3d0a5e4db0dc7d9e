"""Tests of pipeline.data.checks: every fault of ``check-data`` names its file; the CLI's exit codes."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import tifffile

import pipeline.data.checks
from pipeline.data.checks import check_dataset
from tests.pipeline.data.support import PATIENT_A, PATIENT_B, SIZE, make_patient, write_tif

REPO = Path(__file__).resolve().parents[3]
P = PATIENT_A


def _image(size: int = SIZE, channels: int = 3, dtype: type = np.uint8) -> np.ndarray:
    shape = (size, size) if channels == 1 else (size, size, channels)
    return np.full(shape, 7, dtype)


def _mask(size: int = SIZE, value: int = 255, dtype: type = np.uint8, channels: int = 1) -> np.ndarray:
    mask = np.zeros((size, size) if channels == 1 else (size, size, channels), dtype)
    mask[:4, :4] = value
    return mask


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _duplicate_slice(folder: Path) -> None:
    shutil.copy(folder / f"{P}_3.tif", folder / f"{P}_03.tif")
    shutil.copy(folder / f"{P}_3_mask.tif", folder / f"{P}_03_mask.tif")


def _single_slice_patient(folder: Path) -> None:
    make_patient(folder.parent, PATIENT_B, n_slices=1)


# (mutation of patient A's folder (3 slices of 32x32), file named by the fault, text of the fault)
FAULTS: dict[str, tuple[Callable[[Path], None], str, str]] = {
    "image without mask": (lambda f: (f / f"{P}_2_mask.tif").unlink(), f"{P}_2.tif", "image without mask"),
    "mask without image": (lambda f: (f / f"{P}_2.tif").unlink(), f"{P}_2_mask.tif", "mask without image"),
    "size mismatch": (
        lambda f: write_tif(f / f"{P}_2_mask.tif", _mask(64)),
        f"{P}_2.tif",
        "size mismatch: image is 32x32, its mask 64x64",
    ),
    "size not divisible by 16": (
        lambda f: (write_tif(f / f"{P}_2.tif", _image(40)), write_tif(f / f"{P}_2_mask.tif", _mask(40))),
        f"{P}_2.tif",
        "image size 40x40 is not divisible by 16",
    ),
    "image dtype": (
        lambda f: write_tif(f / f"{P}_2.tif", _image(dtype=np.uint16)),
        f"{P}_2.tif",
        "image dtype is uint16; expected uint8",
    ),
    "grayscale image": (
        lambda f: write_tif(f / f"{P}_2.tif", _image(channels=1)),
        f"{P}_2.tif",
        "image has 1 channel(s) (grayscale); expected 3",
    ),
    "4-channel image": (
        lambda f: tifffile.imwrite(f / f"{P}_2.tif", _image(channels=4), photometric="rgb", metadata=None),
        f"{P}_2.tif",
        "image has 4 channel(s) (4-channel); expected 3",
    ),
    "RGB mask": (
        lambda f: write_tif(f / f"{P}_2_mask.tif", _mask(channels=3)),
        f"{P}_2_mask.tif",
        "mask has shape (32, 32, 3) (3 channel(s)); expected one channel",
    ),
    "mask dtype": (
        lambda f: write_tif(f / f"{P}_2_mask.tif", _mask(dtype=np.uint16)),
        f"{P}_2_mask.tif",
        "mask dtype is uint16; expected uint8",
    ),
    "mask 0/1": (
        lambda f: write_tif(f / f"{P}_2_mask.tif", _mask(value=1)),
        f"{P}_2_mask.tif",
        "mask is not binary: values other than 0 and 255 (1)",
    ),
    "truncated image": (lambda f: _truncate(f / f"{P}_2.tif"), f"{P}_2.tif", "unreadable TIFF"),
    "truncated mask": (lambda f: _truncate(f / f"{P}_2_mask.tif"), f"{P}_2_mask.tif", "unreadable TIFF"),
    "not a TIFF": (lambda f: (f / f"{P}_2.tif").write_text("<html>"), f"{P}_2.tif", "not a TIFF"),
    "empty file": (lambda f: (f / f"{P}_2_mask.tif").write_bytes(b""), f"{P}_2_mask.tif", "unreadable TIFF"),
    "single slice": (_single_slice_patient, PATIENT_B, "patient folder holds a single slice"),
    "duplicated slice number": (_duplicate_slice, P, f"duplicated slice number 3: {P}_03.tif, {P}_3.tif"),
}


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    root = tmp_path / "kaggle_3m"
    make_patient(root, P, n_slices=3)
    (root / "data.csv").write_text("Patient,death01\n")
    return root


def test_clean_dataset_ok(dataset: Path) -> None:
    make_patient(dataset, PATIENT_B, n_slices=12)
    report = check_dataset(dataset)
    assert (
        report.ok
        and report.faults == []
        and report.warnings == [f"{dataset}: slices are 32x32, not 256x256 as in the kaggle_3m data"]
    )
    assert (report.n_patients, report.n_slices, report.n_lesion_slices) == (2, 15, 15)
    assert report.format().splitlines() == [
        f"Dataset {dataset}: 2 patients, 15 slices (15 with lesion)",
        "1 warnings:",
        f"  {dataset}: slices are 32x32, not 256x256 as in the kaggle_3m data",
        "OK",
    ]


def test_full_size_without_warnings(tmp_path: Path) -> None:
    make_patient(tmp_path, P, n_slices=2, size=256)
    report = check_dataset(tmp_path)
    assert report.ok and report.warnings == []


@pytest.mark.parametrize("name", list(FAULTS))
def test_fault_names_the_file(dataset: Path, name: str) -> None:
    mutate, culprit, problem = FAULTS[name]
    mutate(dataset / P)
    report = check_dataset(dataset)
    assert not report.ok
    expected = dataset / culprit if culprit in (P, PATIENT_B) else dataset / P / culprit
    assert (str(expected), problem) in [(path, problem) for path, text in report.faults if problem in text], (
        report.format()
    )
    assert culprit in report.format() and "NOT OK" in report.format()


def test_permission_denied(dataset: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    locked = dataset / P / f"{P}_1.tif"
    real = tifffile.TiffFile

    def tiff_file(path, *args, **kwargs):
        if Path(path) == locked:
            raise PermissionError(13, "Permission denied", str(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(pipeline.data.checks.tifffile, "TiffFile", tiff_file)
    report = check_dataset(dataset)
    assert report.faults == [
        (str(locked), "not readable: permission denied (fix with `chmod u+r` on the file)")
    ]


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root reads files without permission")
def test_permission_denied_for_real(dataset: Path) -> None:
    locked = dataset / P / f"{P}_1_mask.tif"
    locked.chmod(0)
    try:
        assert [path for path, _ in check_dataset(dataset).faults] == [str(locked)]
    finally:
        locked.chmod(0o644)


def test_gap_and_no_lesion_are_warnings(tmp_path: Path) -> None:
    folder = make_patient(tmp_path, P, n_slices=5, size=256, lesion=False)
    (folder / f"{P}_2.tif").unlink()
    (folder / f"{P}_2_mask.tif").unlink()
    report = check_dataset(tmp_path)
    assert report.ok and report.n_lesion_slices == 0
    assert report.warnings == [
        f"{folder}: slice numbers missing (2); volumes will have gaps",
        f"{tmp_path}: no mask has a lesion (all are empty); nothing to learn from",
    ]


@pytest.mark.parametrize("layout", ["missing", "file", "empty", "unrelated", "empty patient folder"])
def test_no_dataset_is_a_fault(tmp_path: Path, layout: str) -> None:
    root = tmp_path / "kaggle_3m"
    if layout == "file":
        root.write_text("x")
    elif layout != "missing":
        root.mkdir()
    if layout == "unrelated":
        (root / "data.csv").write_text("Patient\n")
        (root / "README.md").write_text("x\n")
        (root / "notes").mkdir()
        (root / "notes" / "a.txt").write_text("x\n")
    if layout == "empty patient folder":
        (root / P).mkdir()
    report = check_dataset(root)
    assert not report.ok and len(report.faults) == 1
    path, problem = report.faults[0]
    assert path == str(root) and "expected the kaggle_3m layout" in problem
    assert str(root) in report.format()


def test_nested_duplicate_checked_once(tmp_path: Path) -> None:
    make_patient(tmp_path / "kaggle_3m", P, n_slices=3)
    shutil.copytree(tmp_path / "kaggle_3m", tmp_path / "lgg-mri-segmentation" / "kaggle_3m")
    report = check_dataset(tmp_path)
    assert (report.n_patients, report.n_slices) == (1, 3)


def test_each_file_read_once(dataset: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_patient(dataset, PATIENT_B, n_slices=4)
    opened: list[str] = []
    real = tifffile.TiffFile

    def tiff_file(path, *args, **kwargs):
        opened.append(str(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(pipeline.data.checks.tifffile, "TiffFile", tiff_file)
    check_dataset(dataset)
    assert len(opened) == len(set(opened)) == 14


def test_many_faults_summarised(tmp_path: Path) -> None:
    folder = make_patient(tmp_path, P, n_slices=30)
    for k in range(1, 31):
        (folder / f"{P}_{k}_mask.tif").unlink()
    text = check_dataset(tmp_path).format(max_faults=5)
    assert "30 faults:" in text and "... and 25 more (most common: 30x image without mask)" in text
    assert len(text.splitlines()) < 12


def _cli(path: Path) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "pipeline", "check-data", str(path)]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=60)


def test_cli_exit_codes(dataset: Path) -> None:
    done = _cli(dataset)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0] == f"Dataset {dataset}: 1 patients, 3 slices (3 with lesion)"
    assert done.stdout.splitlines()[-1] == "OK"
    write_tif(dataset / P / f"{P}_3_mask.tif", _mask(value=1))
    done = _cli(dataset)
    assert done.returncode == 1
    assert f"{P}/{P}_3_mask.tif: mask is not binary" in done.stdout
    assert _cli(dataset / "missing").returncode == 1
