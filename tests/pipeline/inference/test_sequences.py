"""Patient folders of separate sequences: names, layouts, channel order, missing sequences."""

from __future__ import annotations

import logging
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from pipeline.inference.inputs import find_inputs
from pipeline.inference.sequences import role_of, sequence_patterns
from pipeline.inference.volumes import read_volume
from tests.dicom_support import write_dicom_series

SHAPE = (16, 12, 5)  # (i, j, k)
AFFINE = np.diag([-0.9, -0.9, 3.0, 1.0])  # columns right->left, rows anterior->posterior: the training layout


def content(seed: int, shape=SHAPE) -> np.ndarray:
    """Distinct 8-bit content per sequence (uint8, so that it is read as stored)."""
    return np.random.default_rng(seed).integers(1, 255, shape).astype(np.uint8)


def write_nifti(path: Path, data: np.ndarray, affine: np.ndarray = AFFINE) -> np.ndarray:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, affine), path)
    return data


def kji(data_ijk: np.ndarray) -> np.ndarray:
    """A NIfTI (i, j, k) array in the slice layout read_volume returns: (k, j, i)."""
    return np.transpose(data_ijk, (2, 1, 0)).astype(np.float32)


@pytest.mark.parametrize(
    ("name", "role"),
    [
        ("BraTS20_Training_001_flair", "flair"),
        ("BraTS20_Training_001_t1", "t1"),
        ("BraTS20_Training_001_t1ce", "t1c"),
        ("BraTS20_Training_001_t2", "ignore"),
        ("BraTS20_Training_001_seg", "ignore"),
        ("BraTS-GLI-00000-000-t2f", "flair"),
        ("BraTS-GLI-00000-000-t1n", "t1"),
        ("BraTS-GLI-00000-000-t1c", "t1c"),
        ("BraTS-GLI-00000-000-t2w", "ignore"),
        ("AX FLAIR", "flair"),
        ("Sag_T2_FLAIR_3D", "flair"),
        ("AX T1 SE", "t1"),
        ("t1_mprage", "t1"),
        ("AX T1 POST GD", "t1c"),
        ("T1GD", "t1c"),
        ("ax t1 +c post", "t1c"),
        ("DWI_b1000", "ignore"),
        ("localizer", None),
        ("brain", None),
        ("", None),
    ],
)
def test_default_names_by_hand(name, role):
    assert role_of([name], sequence_patterns()) == role
    assert role_of([name.upper()], sequence_patterns()) == role  # case-insensitive


def test_brats_2020_patient_without_configuration(tmp_path, caplog):
    folder = tmp_path / "BraTS20_Training_001"
    data = {s: write_nifti(folder / f"BraTS20_Training_001_{s}.nii.gz", content(n)) for n, s in enumerate(
        ["t1", "t1ce", "t2", "flair", "seg"])}  # fmt: skip

    with caplog.at_level(logging.INFO, logger="pipeline.inference"):
        [inp] = find_inputs(tmp_path)

    assert (inp.kind, inp.name, inp.path, inp.n_slices, inp.error) == ("patient", folder.name, folder, 5, "")
    assert inp.sequences == {
        "t1": folder / "BraTS20_Training_001_t1.nii.gz",
        "flair": folder / "BraTS20_Training_001_flair.nii.gz",
        "t1c": folder / "BraTS20_Training_001_t1ce.nii.gz",
    }
    assert (inp.substituted, inp.flair_only, inp.dicom_files) == ((), False, ())
    assert inp.spacing == (0.9, 0.9, 3.0)
    np.testing.assert_allclose(inp.geometry["affine"], AFFINE, rtol=1e-6)  # stored as float32
    assert "BraTS20_Training_001_t2.nii.gz (a sequence the network does not use)" in caplog.text
    assert "BraTS20_Training_001_seg.nii.gz (a sequence the network does not use)" in caplog.text

    slices = read_volume(inp)
    assert slices.shape == (5, 3, 12, 16) and slices.dtype == np.float32
    # channels (pre-contrast T1, FLAIR, post-contrast T1); slice k, rows j, columns i
    np.testing.assert_allclose(slices[:, 0], kji(data["t1"]), atol=1e-4)
    np.testing.assert_array_equal(slices[:, 1], kji(data["flair"]))
    np.testing.assert_allclose(slices[:, 2], kji(data["t1ce"]), atol=1e-4)


def test_brats_2023_names_and_nested_patients(tmp_path):
    truth = {}
    for n, patient in enumerate(["BraTS-GLI-00002-000", "BraTS-GLI-00001-000"]):
        folder = tmp_path / "train" / patient
        for m, suffix in enumerate(["t1n", "t1c", "t2w", "t2f"]):
            truth[patient, suffix] = write_nifti(folder / f"{patient}-{suffix}.nii.gz", content(10 * n + m))

    inputs = find_inputs(tmp_path)

    assert [i.name for i in inputs] == ["train/BraTS-GLI-00001-000", "train/BraTS-GLI-00002-000"]
    for inp in inputs:
        patient = inp.path.name
        assert {r: p.name for r, p in inp.sequences.items()} == {
            "t1": f"{patient}-t1n.nii.gz",
            "t1c": f"{patient}-t1c.nii.gz",
            "flair": f"{patient}-t2f.nii.gz",
        }
        slices = read_volume(inp)
        for channel, suffix in enumerate(["t1n", "t2f", "t1c"]):
            np.testing.assert_allclose(slices[:, channel], kji(truth[patient, suffix]), atol=1e-4)


def test_one_key_configures_the_names(tmp_path):
    folder = tmp_path / "p1"
    write_nifti(folder / "dark_fluid.nii.gz", content(1))
    write_nifti(folder / "t1_pre.nii.gz", content(2))
    write_nifti(folder / "t1_contrast.nii.gz", content(3))

    [default] = find_inputs(tmp_path)
    assert "has no FLAIR" in default.error and "dark_fluid.nii.gz" in default.error
    assert "['*flair*', '*-t2f', '*_t2f']" in default.error and "sequence_patterns" in default.error

    patterns = {"flair": ["*DARK_FLUID*"], "t1c": "*contrast*"}  # a string is a one-pattern list
    [inp] = find_inputs(tmp_path, sequence_patterns=patterns)
    assert inp.error == ""
    assert {r: p.name for r, p in inp.sequences.items()} == {
        "flair": "dark_fluid.nii.gz",
        "t1": "t1_pre.nii.gz",  # t1 keeps its default pattern
        "t1c": "t1_contrast.nii.gz",
    }
    with pytest.raises(ValueError, match="sequence_patterns: unknown role 't2'; the roles are flair, t1c"):
        find_inputs(tmp_path, sequence_patterns={"t2": ["*t2*"]})
    # as the bundle CLI passes them: strings
    [cli] = find_inputs(tmp_path, sequence_patterns="{'flair': ['*dark_fluid*'], 't1c': ['*contrast*']}")
    assert cli.sequences == inp.sequences
    with pytest.raises(ValueError, match="sequence_patterns must be a dict role -> list of glob patterns"):
        find_inputs(tmp_path, sequence_patterns="flair=*dark*")


def test_two_flairs_are_an_error_naming_the_folder_and_the_files(tmp_path):
    folder = tmp_path / "p1"
    for name in ["ax_flair.nii.gz", "cor_flair.nii.gz", "t1.nii.gz"]:
        write_nifti(folder / name, content(1))
    [inp] = find_inputs(tmp_path)
    assert inp.kind == "patient" and inp.n_slices == 0
    assert f"patient folder {folder}: 2 candidates for FLAIR:" in inp.error
    assert f"{folder / 'ax_flair.nii.gz'}; {folder / 'cor_flair.nii.gz'}" in inp.error
    assert "keep one" in inp.error


def test_missing_post_contrast_is_replaced_by_flair_and_logged(tmp_path, caplog):
    folder = tmp_path / "p1"
    flair = write_nifti(folder / "p1_flair.nii", content(1))
    t1 = write_nifti(folder / "p1_t1.nii", content(2))
    with caplog.at_level(logging.WARNING, logger="pipeline.inference"):
        [inp] = find_inputs(tmp_path)
        slices = read_volume(inp)
    assert (inp.substituted, inp.flair_only, inp.error) == (("t1c",), False, "")
    assert set(inp.sequences) == {"flair", "t1"}
    assert f"{folder}: no post-contrast T1" in caplog.text and "FLAIR is used in its place" in caplog.text
    np.testing.assert_allclose(slices[:, 0], kji(t1), atol=1e-4)
    np.testing.assert_array_equal(slices[:, 1], kji(flair))
    np.testing.assert_array_equal(slices[:, 2], kji(flair))


def test_flair_alone_is_refused_by_default_saying_why_and_allowed_on_request(tmp_path, caplog):
    folder = tmp_path / "p1"
    flair = write_nifti(folder / "p1_flair.nii.gz", content(1))
    write_nifti(folder / "p1_t2.nii.gz", content(2))  # a patient folder, but no T1 at all

    with caplog.at_level(logging.ERROR, logger="pipeline.inference"):
        [refused] = find_inputs(tmp_path)
    assert (refused.kind, refused.n_slices, refused.flair_only) == ("patient", 0, False)
    assert refused.error.startswith(f"patient folder {folder} has FLAIR alone (no pre- or post-contrast T1)")
    for why in ["trained on three sequences", "Dice 0.941", "0.105 from FLAIR alone"]:
        assert why in refused.error
    assert "allow_flair_only=True (bundle: --allow_flair_only true)" in refused.error
    assert refused.error in caplog.text

    assert find_inputs(tmp_path, allow_flair_only="false")[0].n_slices == 0  # the bundle CLI's strings
    [allowed] = find_inputs(tmp_path, allow_flair_only="true")
    assert (allowed.n_slices, allowed.flair_only, allowed.substituted, allowed.error) == (
        5,
        True,
        ("t1", "t1c"),
        "",
    )
    slices = read_volume(allowed)
    for channel in range(3):
        np.testing.assert_array_equal(slices[:, channel], kji(flair))


def test_one_channel_volume_is_flair_alone(tmp_path, caplog):
    flair = write_nifti(tmp_path / "scan.nii.gz", content(1))
    [refused] = find_inputs(tmp_path)
    assert refused.n_slices == 0 and refused.kind == "nifti"
    assert f"{tmp_path / 'scan.nii.gz'} has one channel, taken as FLAIR alone: refused" in refused.error
    with caplog.at_level(logging.WARNING, logger="pipeline.inference"):
        [allowed] = find_inputs(tmp_path, allow_flair_only=True)
        slices = read_volume(allowed)
    assert allowed.flair_only and allowed.n_slices == 5
    assert "segmented as allowed (allow_flair_only), but unreliable" in caplog.text
    assert "taken as FLAIR and copied into all three channels" in caplog.text
    np.testing.assert_array_equal(slices, np.repeat(kji(flair)[:, None], 3, axis=1))


def test_folders_that_are_not_patients_keep_their_volumes(tmp_path):
    three = np.stack([content(1), content(2), content(3)], axis=-1)
    write_nifti(tmp_path / "sub" / "brain.nii.gz", three)
    write_nifti(tmp_path / "sub" / "brain_mask.nii.gz", content(4))  # a mask: never an input
    write_nifti(tmp_path / "post" / "scan_post.nii.gz", three)  # one sequence name: still a volume
    write_dicom_series(tmp_path / "patient7" / "flair", kji(content(5)).astype(np.uint16))

    inputs = {i.name: i for i in find_inputs(tmp_path, allow_flair_only=True)}

    assert {n: (i.kind, i.n_slices, i.error) for n, i in inputs.items()} == {
        "sub/brain.nii.gz": ("nifti", 5, ""),
        "post/scan_post.nii.gz": ("nifti", 5, ""),
        "patient7/flair": ("dicom", 5, ""),
    }
    assert inputs["patient7/flair"].flair_only and not inputs["sub/brain.nii.gz"].flair_only
    np.testing.assert_array_equal(read_volume(inputs["sub/brain.nii.gz"]), np.transpose(three, (2, 3, 1, 0)))


def test_dicom_folder_of_a_patients_series_is_split_by_uid(tmp_path):
    """The series of one patient in one folder, their files interleaved, told apart by
    SeriesInstanceUID and named by SeriesDescription."""
    folder = tmp_path / "P9"
    volumes = {
        d: kji(content(n)).astype(np.uint8) for n, d in enumerate(["AX T1", "AX FLAIR", "AX T1 POST GD"])
    }
    files = {}
    for number, (description, volume) in enumerate(volumes.items(), start=1):
        pattern = f"IM{{k:02d}}_{number}"  # sorted listing interleaves the three series
        files[description] = write_dicom_series(
            folder, volume, description=description, series_number=number, bits=8, name_pattern=pattern
        )
    write_dicom_series(
        folder, volumes["AX T1"], description="SURVEY", series_number=9, bits=8, name_pattern="S{k}"
    )

    [inp] = find_inputs(tmp_path)

    assert (inp.kind, inp.name, inp.n_slices, inp.error) == ("patient", "P9", 5, "")
    assert inp.sequences == {
        "t1": files["AX T1"][0],
        "flair": files["AX FLAIR"][0],
        "t1c": files["AX T1 POST GD"][0],
    }
    assert inp.sequence_files == {"t1": tuple(files["AX T1"]), "flair": tuple(files["AX FLAIR"]),
                                  "t1c": tuple(files["AX T1 POST GD"])}  # fmt: skip
    assert inp.dicom_files == tuple(files["AX FLAIR"])
    assert inp.geometry["spacing"] == (0.8, 0.8, 2.5)
    np.testing.assert_allclose(inp.geometry["origin"], (-100.0, -120.0, -30.0))
    slices = read_volume(inp)
    for channel, description in enumerate(["AX T1", "AX FLAIR", "AX T1 POST GD"]):
        np.testing.assert_allclose(slices[:, channel], volumes[description], atol=1e-4)


def test_series_subfolders_named_by_number_are_matched_by_description(tmp_path):
    flair, t1c = kji(content(1)).astype(np.uint8), kji(content(2)).astype(np.uint8)
    write_dicom_series(tmp_path / "P3" / "SE0001", flair, description="Ax T2 FLAIR", bits=8)
    write_dicom_series(tmp_path / "P3" / "SE0002", t1c, description="Ax T1 +Gd POST", bits=8)
    [inp] = find_inputs(tmp_path)
    assert inp.sequences == {"flair": tmp_path / "P3" / "SE0001", "t1c": tmp_path / "P3" / "SE0002"}
    assert inp.substituted == ("t1",)
    slices = read_volume(inp)
    np.testing.assert_array_equal(slices[:, 0], flair)  # the missing T1 is FLAIR
    np.testing.assert_allclose(slices[:, 2], t1c, atol=1e-4)


def test_linked_patient_folders_are_found_and_a_link_loop_ends(tmp_path):
    """A dataset of symbolic links to patient folders (a common way to pick a subset), one of
    them a sequence patient and one a kaggle TIFF patient; a link back up the tree is walked once."""
    import tifffile

    store, data = tmp_path / "store", tmp_path / "data"
    patient = store / "BraTS20_Training_002"
    for n, s in enumerate(["t1", "t1ce", "flair"]):
        write_nifti(patient / f"BraTS20_Training_002_{s}.nii.gz", content(n))
    tiff = store / "TCGA_AA_0001_20000101"
    tiff.mkdir(parents=True)
    for k in (1, 2):
        tifffile.imwrite(tiff / f"{tiff.name}_{k}.tif", np.full((8, 8, 3), 40 * k, np.uint8))
    data.mkdir()
    (data / patient.name).symlink_to(patient, target_is_directory=True)
    (data / tiff.name).symlink_to(tiff, target_is_directory=True)
    (data / "loop").symlink_to(data, target_is_directory=True)

    found = {inp.name: inp for inp in find_inputs(data)}

    assert sorted(found) == [patient.name, tiff.name]
    assert (found[patient.name].kind, found[patient.name].n_slices, found[patient.name].error) == (
        "patient",
        5,
        "",
    )
    assert (found[tiff.name].kind, found[tiff.name].n_slices) == ("tiff", 2)
    # the CSV names the files under dataset_dir, not where the links point
    from pipeline.inference.lesion_stats import input_files

    assert input_files(found[tiff.name], data) == tiff.name
    assert (
        input_files(found[patient.name], data).split(";")[1]
        == f"{patient.name}/BraTS20_Training_002_flair.nii.gz"
    )
