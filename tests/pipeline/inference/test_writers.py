"""The mask files and lesion_volumes.csv of inference, on real files, against hand computations."""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import tifffile
import torch

from pipeline.inference.input_record import InferenceInput
from pipeline.inference.orientation import check_axial, nifti_directions
from pipeline.inference.volumes import read_volume
from pipeline.inference.workflow import MaskWriter, find_inputs, run_inference


class BrightFlair(torch.nn.Module):
    """A network stand-in: a large positive logit where the FLAIR channel (1) is bright."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x[:, 1:2] - 0.5) * 50.0


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def region(shape: tuple[int, int], k: int) -> np.ndarray:
    """An asymmetric block that moves with the slice: a transpose or flip misplaces it."""
    mask = np.zeros(shape, bool)
    mask[2 + k : 7 + k, 3 : shape[1] - 9 - k] = True
    return mask


def write_tiff_patient(folder: Path, n: int, shape: tuple[int, int]) -> np.ndarray:
    """kaggle_3m slices whose FLAIR is bright in ``region``; the true masks (n, H, W)."""
    folder.mkdir(parents=True)
    truth = np.stack([region(shape, k) for k in range(n)])
    for k in range(n):
        image = np.full((*shape, 3), 10, np.uint8)
        image[..., 1][truth[k]] = 250
        tifffile.imwrite(folder / f"{folder.name}_{k + 1}.tif", image)
    return truth


def orientation_warnings(caplog) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "pipeline.inference.orientation" and r.levelno >= logging.WARNING
    ]


def test_tiff_volume_mask_has_the_kaggle_geometry_our_orientation_check_accepts(tmp_path, caplog):
    data, out = tmp_path / "in", tmp_path / "out"
    patient = "TCGA_AA_0001_20000101"
    truth = write_tiff_patient(data / patient, 4, (32, 48))  # H 32 rows, W 48 columns

    csv_path = run_inference(data, BrightFlair(), out, image_size=32)

    path = out / f"{patient}_mask.nii.gz"
    image = nib.load(path)
    # (columns i, rows j, slices k); i toward the left, j toward posterior, k toward superior
    assert image.shape == (48, 32, 4)
    np.testing.assert_array_equal(image.affine, np.diag([-1.0, -1.0, 1.0, 1.0]))
    assert nib.aff2axcodes(image.affine) == ("L", "P", "S")
    assert image.get_data_dtype() == np.uint8
    slice_masks = np.stack([tifffile.imread(out / patient / f"{patient}_{k}_mask.tif") for k in range(1, 5)])
    # the per-slice masks: the truth up to a pixel of the 48 -> 32 -> 48 resize at an edge
    assert np.mean((slice_masks > 0) == truth) > 0.98
    np.testing.assert_array_equal(np.asarray(image.dataobj), (slice_masks // 255).transpose(2, 1, 0))

    caplog.clear()
    with caplog.at_level(logging.INFO, logger="pipeline.inference"):
        check_axial(path, nifti_directions(image.affine), "nifti")
        [again] = find_inputs(path, allow_flair_only=True)  # our own output, read back as a volume
        slices = read_volume(again)
    assert orientation_warnings(caplog) == []
    assert again.n_slices == 4 and again.spacing == (1.0, 1.0, 1.0)
    # read back as a volume, slice k is the TIFF's slice k: rows and columns as in the TIFF
    np.testing.assert_array_equal(slices[:, 1], slice_masks // 255)
    [row] = read_csv(csv_path)
    assert row["lesion_voxels"] == str(int(slice_masks.astype(bool).sum()))
    assert row["lesion_volume_mm3"] == row["lesion_volume_ml"] == ""  # TIFFs carry no spacing
    assert row["slices_with_lesion"] == "4"


def nifti_3channel(shape_kji: tuple[int, int, int], bright: np.ndarray) -> np.ndarray:
    """(i, j, k, 3) volume: FLAIR (channel 1) 900 where ``bright`` (k, j, i), else 100."""
    flair = np.where(bright, 900.0, 100.0).astype(np.float32)
    volume = np.stack(
        [np.full(shape_kji, 300.0, np.float32), flair, np.full(shape_kji, 200.0, np.float32)], -1
    )
    return volume.transpose(2, 1, 0, 3)


def two_components(shape_kji: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Component A: 4 x 5 pixels on slices 1 and 2 (40 voxels); B: 2 x 3 on slice 4 (6 voxels)."""
    a, b = np.zeros(shape_kji, bool), np.zeros(shape_kji, bool)
    a[1:3, 4:8, 10:15] = True
    b[4, 20:22, 3:6] = True
    return a, b


def test_lesion_volumes_csv_by_hand(tmp_path):
    """0.5 x 0.5 x 3 mm voxels, 46 lesion voxels: 34.5 mm3, 0.0345 mL, 3 slices, largest 40/46."""
    data, out = tmp_path / "in", tmp_path / "out"
    (data / "site").mkdir(parents=True)
    shape = (6, 32, 32)  # k, j, i; 32 x 32 slices are not resized at image_size 32: exact masks
    a, b = two_components(shape)
    affine = np.diag([0.5, 0.5, 3.0, 1.0])
    nib.save(nib.Nifti1Image(nifti_3channel(shape, a | b), affine), data / "site" / "scan.nii.gz")

    csv_path = run_inference(data, BrightFlair(), out, image_size=32)

    mask = np.asarray(nib.load(out / "site" / "scan_mask.nii.gz").dataobj).transpose(2, 1, 0)
    np.testing.assert_array_equal(mask, (a | b).astype(np.uint8))
    [row] = read_csv(csv_path)
    assert list(row) == [
        "input",
        "n_slices",
        "lesion_voxels",
        "lesion_volume_mm3",
        "lesion_volume_ml",
        "slices_with_lesion",
        "largest_component_share",
        "substituted",
        "flair_only",
        "input_files",
    ]
    assert row["input"] == "site/scan.nii.gz" and row["n_slices"] == "6"
    assert row["lesion_voxels"] == "46"
    assert float(row["lesion_volume_mm3"]) == pytest.approx(34.5)
    assert float(row["lesion_volume_ml"]) == pytest.approx(0.0345)
    assert row["slices_with_lesion"] == "3"
    assert float(row["largest_component_share"]) == pytest.approx(40 / 46, abs=1e-4)
    assert (row["substituted"], row["flair_only"]) == ("", "false")
    assert row["input_files"] == "site/scan.nii.gz"  # relative to dataset_dir


def test_largest_component_keeps_only_the_largest_3d_component(tmp_path):
    data, out = tmp_path / "in", tmp_path / "out"
    data.mkdir()
    shape = (6, 32, 32)
    a, b = two_components(shape)
    # a third component touching A only diagonally (edge, not face): separate under face connectivity
    c = np.zeros(shape, bool)
    c[3, 8, 15] = True
    nib.save(nib.Nifti1Image(nifti_3channel(shape, a | b | c), np.diag([0.5, 0.5, 3.0, 1.0])), data / "s.nii")

    csv_path = run_inference(data, BrightFlair(), out, image_size=32, largest_component=True)

    mask = np.asarray(nib.load(out / "s_mask.nii").dataobj).transpose(2, 1, 0)
    np.testing.assert_array_equal(mask, a.astype(np.uint8))
    [row] = read_csv(csv_path)
    assert (row["lesion_voxels"], row["slices_with_lesion"]) == ("40", "2")
    assert float(row["largest_component_share"]) == 1.0
    assert float(row["lesion_volume_ml"]) == pytest.approx(40 * 0.75 / 1000)


def patient_input(data: Path, name: str, flair: np.ndarray, **fields) -> InferenceInput:
    """A "patient" input (a folder of sequences) whose FLAIR is a NIfTI file, built by hand."""
    folder = data / name
    folder.mkdir(parents=True)
    affine = np.diag([-0.9, -0.9, 2.0, 1.0])
    nib.save(nib.Nifti1Image(flair.transpose(2, 1, 0), affine), folder / "flair.nii.gz")
    image = nib.load(folder / "flair.nii.gz")
    return InferenceInput(
        name,
        "patient",
        folder,
        flair.shape[0],
        spacing=(0.9, 0.9, 2.0),
        geometry={"affine": image.affine, "header": image.header.copy()},
        sequences={"flair": folder / "flair.nii.gz", **fields.pop("sequences", {})},
        **fields,
    )


def feed(writer: MaskWriter, index: int, masks_kji: np.ndarray) -> None:
    """The writer's input ``index`` receives probabilities 0.9 on ``masks_kji``, 0.1 elsewhere."""
    for k, mask in enumerate(masks_kji):
        prob = torch.from_numpy(np.where(mask, 0.9, 0.1).astype(np.float32))[None]
        writer.add(index, k, prob, *mask.shape)


def test_patients_of_one_name_in_two_folders_keep_their_relative_paths(tmp_path):
    data, out = tmp_path / "in", tmp_path / "out"
    shape = (3, 16, 20)
    masks = [np.zeros(shape, bool), np.zeros(shape, bool)]
    masks[0][1, 2:5, 3:9] = True
    masks[1][2, 10:12, 1:4] = True
    t1 = data / "siteB" / "P01" / "t1.nii.gz"
    inputs = [
        patient_input(
            data, "siteA/P01", np.zeros(shape, np.float32), substituted=("t1", "t1c"), flair_only=True
        ),
        patient_input(
            data, "siteB/P01", np.zeros(shape, np.float32), substituted=("t1c",), sequences={"t1": t1}
        ),
    ]
    writer = MaskWriter(inputs, out, dataset_dir=data, report=False)
    for index, mask in enumerate(masks):
        feed(writer, index, mask)
    writer.finish()

    for name, mask in zip(("siteA/P01", "siteB/P01"), masks):
        image = nib.load(out / f"{name}_mask.nii.gz")
        np.testing.assert_array_equal(np.asarray(image.dataobj).transpose(2, 1, 0), mask.astype(np.uint8))
        np.testing.assert_allclose(image.affine, np.diag([-0.9, -0.9, 2.0, 1.0]))
    rows = {r["input"]: r for r in read_csv(out / "lesion_volumes.csv")}
    assert sorted(rows) == ["siteA/P01", "siteB/P01"]
    assert (rows["siteA/P01"]["substituted"], rows["siteA/P01"]["flair_only"]) == ("t1;t1c", "true")
    assert (rows["siteB/P01"]["substituted"], rows["siteB/P01"]["flair_only"]) == ("t1c", "false")
    # the sequences read, channel order (t1, FLAIR, t1c), relative to dataset_dir
    assert rows["siteA/P01"]["input_files"] == "siteA/P01/flair.nii.gz"
    assert rows["siteB/P01"]["input_files"] == "siteB/P01/t1.nii.gz;siteB/P01/flair.nii.gz"
    assert float(rows["siteA/P01"]["lesion_volume_ml"]) == pytest.approx(18 * 0.9 * 0.9 * 2.0 / 1000)


def test_two_inputs_writing_one_file_are_refused_before_anything_is_written(tmp_path):
    data, out = tmp_path / "in", tmp_path / "out"
    shape = (2, 8, 8)
    first = patient_input(data / "a", "P01", np.zeros(shape, np.float32))
    second = patient_input(data / "b", "P01", np.zeros(shape, np.float32))
    with pytest.raises(ValueError, match=r"P01 and P01 would both write .*P01_mask.nii.gz; give the two"):
        MaskWriter([first, second], out)
    assert not out.exists()


def test_a_mask_of_a_patient_without_geometry_is_a_failure_naming_it(tmp_path):
    from pipeline.inference.run_summary import InferenceFailed

    out = tmp_path / "out"
    inp = InferenceInput("P02", "patient", tmp_path / "P02", 2)
    writer = MaskWriter([inp], out, report=False)
    feed(writer, 0, np.ones((2, 4, 4), bool))
    with pytest.raises(InferenceFailed, match="P02"):
        writer.finish()
    [row] = read_csv(out / "failures.csv")
    assert row["input"] == "P02" and "no geometry" in row["error"] and str(tmp_path / "P02") in row["error"]
    assert read_csv(out / "lesion_volumes.csv") == []
