"""Tests of pipeline.data.discovery: pairing by stem, numeric order, the nested duplicate, errors."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import tifffile

from pipeline.data.discovery import DatasetError, discover, fingerprint, parse_slice_path
from tests.pipeline.data.support import PATIENT_A, PATIENT_B, make_patient


def test_pairs_by_stem_in_numeric_order(tmp_path: Path) -> None:
    # 12 slices: sorting both listings and zipping pairs _10_mask with _1
    make_patient(tmp_path, PATIENT_A, n_slices=12)
    records = discover(tmp_path)
    assert [r["slice"] for r in records] == list(range(1, 13))
    for r in records:
        assert r["patient"] == PATIENT_A
        assert Path(r["image"]).name == f"{PATIENT_A}_{r['slice']}.tif"
        assert Path(r["label"]).name == f"{PATIENT_A}_{r['slice']}_mask.tif"
        assert int(tifffile.imread(r["image"])[0, 0, 0]) == r["slice"]
        assert int((tifffile.imread(r["label"]) > 0).sum()) == r["slice"]


def test_sorted_by_patient_then_slice(tmp_path: Path) -> None:
    make_patient(tmp_path, PATIENT_B, n_slices=10)
    make_patient(tmp_path, PATIENT_A, n_slices=2)
    keys = [(r["patient"], r["slice"]) for r in discover(tmp_path)]
    assert keys == [(PATIENT_A, 1), (PATIENT_A, 2)] + [(PATIENT_B, k) for k in range(1, 11)]


@pytest.mark.parametrize("top", ["kaggle_3m", "."])
def test_nested_duplicate_counted_once(tmp_path: Path, top: str) -> None:
    # the archive root holds kaggle_3m/ and lgg-mri-segmentation/kaggle_3m/ (a full copy)
    make_patient(tmp_path / top, PATIENT_A, n_slices=4)
    make_patient(tmp_path / top, PATIENT_B, n_slices=3)
    nested = tmp_path / "lgg-mri-segmentation" / "kaggle_3m"
    shutil.copytree(tmp_path / top / PATIENT_A, nested / PATIENT_A)
    shutil.copytree(tmp_path / top / PATIENT_B, nested / PATIENT_B)
    records = discover(tmp_path)
    assert len(records) == 7
    assert len({(r["patient"], r["slice"]) for r in records}) == 7
    assert all("lgg-mri-segmentation" not in r["image"] for r in records)  # the top-level copy wins
    assert fingerprint(records) == fingerprint(discover(tmp_path / top))


def test_unrelated_files_ignored(tmp_path: Path) -> None:
    folder = make_patient(tmp_path, PATIENT_A, n_slices=2)
    (tmp_path / "data.csv").write_text("Patient,death01\n")
    (tmp_path / "README.md").write_text("lgg\n")
    (tmp_path / ".DS_Store").write_bytes(b"\0")
    (folder / ".DS_Store").write_bytes(b"\0")
    (folder / f"._{PATIENT_A}_1.tif").write_bytes(b"macOS resource fork")
    (folder / "notes.txt").write_text("reviewed\n")
    records = discover(tmp_path)
    assert [Path(r["image"]).name for r in records] == [f"{PATIENT_A}_1.tif", f"{PATIENT_A}_2.tif"]


def test_without_masks_for_inference(tmp_path: Path) -> None:
    folder = make_patient(tmp_path, PATIENT_A, n_slices=3)
    (folder / f"{PATIENT_A}_2_mask.tif").unlink()
    with pytest.raises(DatasetError, match=f"{PATIENT_A}_2.tif"):
        discover(tmp_path)
    records = discover(tmp_path, require_masks=False)
    assert [r["label"] is None for r in records] == [False, True, False]


def test_orphans_named_and_counted(tmp_path: Path) -> None:
    folder = make_patient(tmp_path, PATIENT_A, n_slices=8)
    for k in range(1, 8):
        (folder / f"{PATIENT_A}_{k}_mask.tif").unlink()
    (folder / f"{PATIENT_A}_8.tif").unlink()
    with pytest.raises(DatasetError) as err:
        discover(tmp_path)
    message = str(err.value)
    assert f"{PATIENT_A}_1.tif" in message and "and 2 more" in message
    assert "7 images without a mask" in message
    assert f"1 masks without an image: {folder / f'{PATIENT_A}_8_mask.tif'}" in message


def test_duplicate_slice_number_refused(tmp_path: Path) -> None:
    folder = make_patient(tmp_path, PATIENT_A, n_slices=3)
    shutil.copy(folder / f"{PATIENT_A}_3.tif", folder / f"{PATIENT_A}_03.tif")
    shutil.copy(folder / f"{PATIENT_A}_3_mask.tif", folder / f"{PATIENT_A}_03_mask.tif")
    with pytest.raises(DatasetError, match="both slice 3"):
        discover(tmp_path)


def test_missing_or_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="does not exist.*kaggle_3m layout"):
        discover(tmp_path / "nowhere")
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(DatasetError, match="is not a folder"):
        discover(tmp_path / "file.txt")
    (tmp_path / "TCGA_CS_4941_19960909").mkdir()
    (tmp_path / "data.csv").write_text("Patient\n")
    with pytest.raises(DatasetError, match="holds no slices.*one folder per patient"):
        discover(tmp_path)


def test_slices_directly_in_folder_explained(tmp_path: Path) -> None:
    folder = make_patient(tmp_path, PATIENT_A, n_slices=2)
    with pytest.raises(DatasetError, match="directly instead of patient folders"):
        discover(folder)


def test_parse_slice_path() -> None:
    assert parse_slice_path(f"/data/{PATIENT_A}/{PATIENT_A}_12.tif") == (PATIENT_A, 12)
    assert parse_slice_path(f"{PATIENT_A}/{PATIENT_A}_7_mask.tif") == (PATIENT_A, 7)
    with pytest.raises(DatasetError, match="cannot read a slice number from"):
        parse_slice_path(f"/data/{PATIENT_A}/notes.tif")


def test_fingerprint_relative_and_sensitive(tmp_path: Path) -> None:
    make_patient(tmp_path / "a", PATIENT_A, n_slices=3)
    before = fingerprint(discover(tmp_path / "a"))
    assert len(before) == 16 and int(before, 16) >= 0
    (tmp_path / "a").rename(tmp_path / "b")
    assert fingerprint(discover(tmp_path / "b")) == before
    make_patient(tmp_path / "b", PATIENT_A, n_slices=4)
    assert fingerprint(discover(tmp_path / "b")) != before
