"""Bad inputs do not stop a batch: find_inputs returns them with ``error`` (naming the file or
folder and the fix) and n_slices 0, logs them, and reads headers only."""

from __future__ import annotations

import logging
import shutil
import tracemalloc
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from pipeline.data.discovery import DatasetError
from pipeline.inference.inputs import find_inputs
from pipeline.inference.volumes import read_volume
from tests.dicom_support import write_dicom_series

AFFINE = np.diag([-1.0, -1.0, 2.0, 1.0])
SAGITTAL = np.array([[0.0, 0, 1, 0], [-1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 1]])


def nifti(path: Path, shape=(16, 12, 5), affine=AFFINE, dtype=np.uint8) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = np.random.default_rng(len(str(path))).integers(1, 200, shape).astype(dtype)
    nib.save(nib.Nifti1Image(data, affine), path)
    return path


def patient(folder: Path, *names: str) -> Path:
    for name in names:
        nifti(folder / name)
    return folder


def build_batch(data: Path) -> dict[str, tuple[Path, list[str]]]:
    """A dataset with one good patient and one of each bad input: name -> (the path the error
    must name, phrases of the error and its fix)."""
    patient(data / "good", "good_flair.nii.gz", "good_t1.nii.gz", "good_t1ce.nii.gz")
    patient(data / "no_flair", "x_t1.nii.gz", "x_t1ce.nii.gz", "x_t2.nii.gz")
    unreadable = patient(data / "unreadable", "x_t1.nii.gz") / "x_flair.nii.gz"
    unreadable.write_bytes(b"\x1f\x8b not really gzip")
    study = "1.2.826.0.1.3680043.8.498.77"
    volume = np.full((4, 8, 8), 300, np.uint16)
    write_dicom_series(data / "mixed", volume, description="SE 1", study_uid=study, name_pattern="A{k}")
    write_dicom_series(data / "mixed", volume, description="SE 2", study_uid=study, name_pattern="B{k}")
    patient(data / "mixed_sequence", "x_t1.nii.gz")
    for tag in "AB":  # a folder named as a sequence, holding two acquisitions
        write_dicom_series(
            data / "mixed_sequence" / "flair", volume, description="AX FLAIR", name_pattern=tag + "{k}"
        )
    nifti(data / "four_d.nii.gz", shape=(16, 12, 5, 30))
    nifti(data / "two_channels.nii.gz", shape=(16, 12, 5, 2))
    four_d_sequence = patient(data / "four_d_sequence", "x_t1.nii.gz") / "x_flair.nii.gz"
    nifti(four_d_sequence, shape=(16, 12, 5, 3))
    sagittal = patient(data / "sagittal", "x_t1.nii.gz") / "x_flair.nii.gz"
    nifti(sagittal, affine=SAGITTAL)
    (data / "empty").mkdir()
    patient(data / "flair_only", "x_flair.nii.gz", "x_t2.nii.gz")
    (data / "truncated").mkdir()
    shutil.copy(get_testdata_file("MR_truncated.dcm"), data / "truncated" / "MR_truncated.dcm")
    return {
        "no_flair": (
            data / "no_flair",
            ["has no FLAIR", "x_t1.nii.gz", "Add the FLAIR", "sequence_patterns"],
        ),
        "unreadable": (unreadable, ["cannot read", "is the file complete?"]),
        "mixed": (
            data / "mixed",
            ["holds 2 series ('SE 1', 'SE 2')", "move each series into a folder of its own"],
        ),
        "mixed_sequence": (
            data / "mixed_sequence" / "flair",
            ["holds 2 DICOM series", "a sequence folder holds one"],
        ),
        "four_d.nii.gz": (data / "four_d.nii.gz", ["has 30 channels: expected 3 channels"]),
        "two_channels.nii.gz": (data / "two_channels.nii.gz", ["has 2 channels: expected 3 channels"]),
        "four_d_sequence": (
            four_d_sequence,
            ["has 3 channels: a sequence of a patient folder must have one"],
        ),
        "sagittal": (sagittal, ["slices are sagittal, not axial", "Reslice it to axial first"]),
        "empty": (data / "empty", ["is empty: nothing to segment", "or remove it"]),
        "flair_only": (data / "flair_only", ["FLAIR alone", "Dice 0.941", "--allow_flair_only true"]),
        "truncated": (data / "truncated" / "MR_truncated.dcm", ["pixel data is cut short", "dcm2niix"]),
    }


def test_bad_inputs_do_not_stop_the_batch(tmp_path, caplog):
    expected = build_batch(tmp_path)

    with caplog.at_level(logging.ERROR, logger="pipeline.inference"):
        inputs = {inp.name: inp for inp in find_inputs(tmp_path)}

    assert sorted(inputs) == sorted(["good", *expected])
    good = inputs.pop("good")
    assert (good.kind, good.n_slices, good.error) == ("patient", 5, "")
    assert read_volume(good).shape == (5, 3, 12, 16)
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    for name, inp in inputs.items():
        path, phrases = expected[name]
        assert inp.n_slices == 0, name
        assert str(path) in inp.error, (name, inp.error)
        for phrase in phrases:
            assert phrase in inp.error, (name, phrase, inp.error)
        assert inp.error in errors, name
        with pytest.raises(ValueError, match="."):
            read_volume(inp)
    assert len(errors) == len(expected)


@pytest.mark.parametrize("layout", ["missing", "notes", "empty_subfolders"])
def test_nothing_recognisable_is_still_a_dataset_error(tmp_path, layout):
    root = tmp_path / "data"
    if layout != "missing":
        root.mkdir()
    if layout == "notes":
        (root / "notes.txt").write_text("no scans here")
    if layout == "empty_subfolders":
        (root / "a").mkdir()
        (root / "b" / "c").mkdir(parents=True)
    message = "does not exist" if layout == "missing" else "holds nothing to segment"
    with pytest.raises(DatasetError, match=message):
        find_inputs(root)


def test_finding_reads_headers_only(tmp_path):
    """Inputs whose pixel data is cut short or garbage are found from their headers; reading them fails,
    naming the file: find_inputs never read their pixels."""
    import itk

    folder = tmp_path / "P"
    flair = nifti(folder / "P_flair.nii", shape=(32, 32, 20), dtype=np.int16)
    flair.write_bytes(flair.read_bytes()[:2000])  # header intact, most pixel data gone
    image = itk.image_from_array(np.ones((20, 32, 32), np.float32))
    itk.imwrite(image, str(folder / "P_t1.nhdr"))
    [data_file] = folder.glob("P_t1.raw*")  # the detached pixel data of the NRRD header
    data_file.write_bytes(data_file.read_bytes()[:100])
    volume = np.full((20, 32, 32), 400, np.uint16)
    files = write_dicom_series(folder / "t1c", volume, description="AX T1 POST")
    for path in files:  # garbage compressed pixel data: a valid header
        ds = pydicom.dcmread(path)
        ds.file_meta.TransferSyntaxUID = pydicom.uid.RLELossless
        ds.PixelData = pydicom.encaps.encapsulate([b"\x07garbage" * 4])
        ds["PixelData"].VR = "OB"
        ds.save_as(path, enforce_file_format=True)

    [inp] = find_inputs(tmp_path)

    assert (inp.kind, inp.n_slices, inp.error) == ("patient", 20, "")
    assert set(inp.sequences) == {"flair", "t1", "t1c"}
    with pytest.raises(ValueError, match=f"cannot read {flair}"):
        read_volume(inp)
    nifti(flair, shape=(32, 32, 20), dtype=np.int16)  # FLAIR whole again: the NRRD is next
    with pytest.raises(ValueError, match="cannot read .*P_t1.nhdr"):
        read_volume(inp)
    itk.imwrite(image, str(folder / "P_t1.nhdr"))  # the NRRD whole again: the DICOM series is next
    with pytest.raises(ValueError, match=f"cannot read {folder / 't1c'}"):
        read_volume(inp)


def test_a_large_folder_is_found_without_holding_its_pixels(tmp_path):
    """Finding 12 patients allocates less than reading one of them."""
    for n in range(12):
        patient_dir = tmp_path / f"P{n:02d}"
        for role in ("flair", "t1", "t1ce"):
            path = patient_dir / f"P{n:02d}_{role}.nii.gz"
            path.parent.mkdir(parents=True, exist_ok=True)
            nib.save(nib.Nifti1Image(np.zeros((64, 64, 24), np.int16), AFFINE), path)

    tracemalloc.start()
    inputs = find_inputs(tmp_path)
    _, finding = tracemalloc.get_traced_memory()
    tracemalloc.reset_peak()
    one = read_volume(inputs[0])
    _, reading = tracemalloc.get_traced_memory()
    tracemalloc.stop()

    assert len(inputs) == 12 and all(inp.error == "" for inp in inputs)
    assert one.nbytes == 24 * 3 * 64 * 64 * 4
    print(f"finding {finding} B, one patient {one.nbytes} B, reading it {reading} B")
    assert finding < one.nbytes < reading
