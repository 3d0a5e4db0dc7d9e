"""pipeline.inference.workflow on real files: TIFF folders, NIfTI, NRRD, MetaImage and DICOM inputs."""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import tifffile
import torch

from networks import UNet
from pipeline.data.discovery import DatasetError
from pipeline.inference.volumes import read_volume
from pipeline.inference.workflow import find_inputs, run_inference
from tests.dicom_support import write_dicom_series

# the kaggle_3m slice layout of a TIFF patient's volume mask: columns toward the left, rows posterior
TIFF_AFFINE = np.diag([-1.0, -1.0, 1.0, 1.0])


class BrightFlair(torch.nn.Module):
    """A network stand-in: a large positive logit where the FLAIR channel (1) is bright."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x[:, 1:2] - 0.5) * 50.0


def tiny_unet() -> UNet:
    torch.manual_seed(0)
    return UNet(n_filters=2, depth=3)


def write_patient(
    root: Path, patient: str, n: int, size=(32, 32), seed=0, with_mask=False
) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    folder = root / patient
    folder.mkdir(parents=True)
    images = []
    for k in range(1, n + 1):
        image = rng.integers(0, 255, (*size, 3), dtype=np.uint8)
        tifffile.imwrite(folder / f"{patient}_{k}.tif", image)
        if with_mask:
            tifffile.imwrite(folder / f"{patient}_{k}_mask.tif", np.full(size, 255, np.uint8))
        images.append(image)
    return images


def bright_region(shape: tuple[int, int], k: int) -> np.ndarray:
    """An asymmetric block that moves with the slice: a transpose or flip misplaces it."""
    region = np.zeros(shape, bool)
    region[2 + k : 7 + k, 3 : shape[1] - 6 - k] = True
    return region


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_tiff_folder_round_trip(tmp_path):
    data, out = tmp_path / "in", tmp_path / "out"
    write_patient(data, "TCGA_AA_0001_20000101", 3, seed=1, with_mask=True)
    write_patient(data, "TCGA_BB_0002_20000102", 11, size=(40, 48), seed=2)
    masks_before = sorted((data / "TCGA_AA_0001_20000101").glob("*_mask.tif"))

    csv_path = run_inference(data, tiny_unet(), out, image_size=32)

    for patient, n, shape in (
        ("TCGA_AA_0001_20000101", 3, (32, 32)),
        ("TCGA_BB_0002_20000102", 11, (40, 48)),
    ):
        names = sorted(p.name for p in (out / patient).iterdir())
        assert names == sorted(f"{patient}_{k}_mask.tif" for k in range(1, n + 1))
        masks = [tifffile.imread(out / patient / f"{patient}_{k}_mask.tif") for k in range(1, n + 1)]
        for mask in masks:
            assert mask.shape == shape and mask.dtype == np.uint8
            assert set(np.unique(mask)) <= {0, 255}
        volume = nib.load(out / f"{patient}_mask.nii.gz")
        assert volume.shape == (shape[1], shape[0], n)  # (columns, rows, slices)
        np.testing.assert_array_equal(volume.affine, TIFF_AFFINE)
        # slice order is numeric (10 and 11 after 9), not the order of a sorted listing
        np.testing.assert_array_equal(
            np.asarray(volume.dataobj), np.stack(masks, axis=-1).transpose(1, 0, 2) // 255
        )
    # masks in the input folder are neither required nor touched
    assert sorted((data / "TCGA_AA_0001_20000101").glob("*_mask.tif")) == masks_before
    rows = read_csv(csv_path)
    assert [r["input"] for r in rows] == ["TCGA_AA_0001_20000101", "TCGA_BB_0002_20000102"]
    assert [r["n_slices"] for r in rows] == ["3", "11"]
    assert all(r["lesion_volume_mm3"] == "" for r in rows)
    assert not list(out.rglob(".tmp-*"))


def test_tiff_slices_load_with_metadata_and_scale_without(tmp_path):
    """SliceDataset splits the TIFF chain (load with MONAI metadata, then scale and resize as
    plain tensors): the same numbers as the whole chain run by a MONAI Compose, and the slice's
    size as numpy reads the file (height first), without reading it twice."""
    from pipeline.inference.workflow import SliceDataset, tiff_preprocessing

    images = write_patient(tmp_path, "TCGA_BB_0002_20000102", 2, size=(64, 96), seed=3)
    inputs = find_inputs(tmp_path)
    chain = tiff_preprocessing(32)
    dataset = SliceDataset(inputs, chain)
    for k, image in enumerate(images):
        item = dataset[k]
        expected = chain({"image": str(inputs[0].slices[k])})["image"]
        assert type(item["image"]) is torch.Tensor and item["image"].dtype == torch.float32
        torch.testing.assert_close(item["image"], expected, rtol=0, atol=1e-6)
        assert (item["height"], item["width"]) == image.shape[:2] == (64, 96)
        # by hand: an area resize by whole factors (2 and 3) keeps the scaled channel's mean
        scaled = (image - image.min()) / (image.max() - image.min())
        assert float(item["image"][1].mean()) == pytest.approx(float(scaled[..., 1].mean()), abs=1e-5)


def test_tiff_mask_lands_on_the_bright_flair_region(tmp_path):
    data, out = tmp_path / "in", tmp_path / "out"
    patient = "TCGA_CC_0003_20000103"
    (data / patient).mkdir(parents=True)
    for k in range(1, 12):
        image = np.full((32, 32, 3), 10, np.uint8)
        region = bright_region((32, 32), k)
        image[..., 1][region] = 250
        image[..., 0][~region] = 250  # other channels bright elsewhere: catches a channel mix-up
        image[..., 2][-4:, :] = 250
        tifffile.imwrite(data / patient / f"{patient}_{k}.tif", image)

    run_inference(data, BrightFlair(), out, image_size=32)

    truth = np.stack([bright_region((32, 32), k) for k in range(1, 12)], axis=-1).astype(np.uint8)
    for k in range(1, 12):
        mask = tifffile.imread(out / patient / f"{patient}_{k}_mask.tif")
        np.testing.assert_array_equal(mask, truth[..., k - 1] * 255)
    # the patient volume stacks the slices in numeric order (10, 11 after 9) as (W, H, n_slices)
    volume = np.asarray(nib.load(out / f"{patient}_mask.nii.gz").dataobj)
    np.testing.assert_array_equal(volume, truth.transpose(1, 0, 2))


def nifti_volume(shape_ij: tuple[int, int], n: int, channels: int | None = None) -> np.ndarray:
    """(i, j, k[, c]) volume whose slice k, seen as rows j x columns i, is bright in bright_region."""
    flair = np.full((*shape_ij, n), 100.0, np.float32)
    for k in range(n):
        flair[..., k][bright_region(shape_ij[::-1], k).T] = 900.0
    if channels is None:
        return flair
    return np.stack([flair] * channels, axis=-1)


def test_nifti_volume_keeps_shape_affine_and_reports_mm3(tmp_path, caplog):
    data, out = tmp_path / "in", tmp_path / "out"
    (data / "sub").mkdir(parents=True)
    affine = np.array([[0.0, -0.9, 0.0, 100.0], [0.9, 0.0, 0.0, -20.0], [0.0, 0.0, 3.0, 5.0], [0, 0, 0, 1]])
    nib.save(nib.Nifti1Image(nifti_volume((32, 24), 5, channels=3), affine), data / "sub" / "brain.nii.gz")
    nib.save(nib.Nifti1Image(np.ones((32, 24, 5), np.uint8), affine), data / "sub" / "brain_mask.nii.gz")

    with caplog.at_level(logging.WARNING, logger="pipeline.inference"):
        csv_path = run_inference(data, BrightFlair(), out, image_size=32)

    assert "taken as FLAIR" not in caplog.text
    result = nib.load(out / "sub" / "brain_mask.nii.gz")
    assert result.shape == (32, 24, 5)
    np.testing.assert_allclose(result.affine, affine)
    mask = np.asarray(result.dataobj)
    assert mask.dtype == np.uint8 and set(np.unique(mask)) == {0, 1}
    # resizing 24 -> 32 -> 24 may move an edge by a pixel, never more; a transpose or flip moves it a lot
    truth = nifti_volume((32, 24), 5) > 500
    assert np.mean(mask.astype(bool) == truth) > 0.97
    assert (mask[truth]).mean() > 0.9 and (mask[~truth]).mean() < 0.05
    rows = read_csv(csv_path)
    assert [r["input"] for r in rows] == ["sub/brain.nii.gz"]  # the _mask file is ignored
    assert int(rows[0]["n_slices"]) == 5
    assert int(rows[0]["lesion_voxels"]) == int(mask.sum())
    assert float(rows[0]["lesion_volume_mm3"]) == pytest.approx(mask.sum() * 0.9 * 0.9 * 3.0)


def test_nifti_three_channels_exact_orientation(tmp_path):
    data, out = tmp_path / "in", tmp_path / "out"
    data.mkdir()
    volume = nifti_volume((32, 32), 4, channels=3)
    volume[..., 0] = 900.0 - volume[..., 1]  # pre-contrast bright elsewhere
    nib.save(nib.Nifti1Image(volume, np.diag([1.0, 1.0, 2.0, 1.0])), data / "t.nii")

    run_inference(data, BrightFlair(), out, image_size=32)

    mask = np.asarray(nib.load(out / "t_mask.nii").dataobj)
    np.testing.assert_array_equal(mask, (volume[..., 1] > 500).astype(np.uint8))


@pytest.mark.parametrize("suffix", [".nrrd", ".mha"])
def test_itk_volume_same_format_and_geometry(tmp_path, suffix):
    import itk

    data, out = tmp_path / "in", tmp_path / "out"
    data.mkdir()
    flair = np.transpose(nifti_volume((32, 32), 4), (2, 1, 0))  # ITK arrays are (k, j, i)
    channels = np.stack([900 - flair, flair, flair], axis=-1).astype(np.int16)  # a vector pixel: 3 channels
    image = itk.image_from_array(np.ascontiguousarray(channels), is_vector=True)
    image.SetSpacing([0.5, 0.8, 2.5])
    image.SetOrigin([1.0, 2.0, 3.0])
    itk.imwrite(image, str(data / f"scan{suffix}"))

    csv_path = run_inference(data, BrightFlair(), out, image_size=32)

    result = itk.imread(str(out / f"scan_mask{suffix}"))
    mask = itk.array_from_image(result)
    np.testing.assert_array_equal(mask, (flair > 500).astype(np.uint8))
    np.testing.assert_allclose(tuple(result.GetSpacing()), (0.5, 0.8, 2.5))
    np.testing.assert_allclose(tuple(result.GetOrigin()), (1.0, 2.0, 3.0))
    row = read_csv(csv_path)[0]
    assert float(row["lesion_volume_mm3"]) == pytest.approx(mask.sum() * 0.5 * 0.8 * 2.5)


def test_two_channel_volume_is_an_error_input_naming_the_file(tmp_path):
    path = tmp_path / "two.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 3, 2), np.float32), np.eye(4)), path)
    [inp] = find_inputs(tmp_path)
    assert inp.n_slices == 0 and inp.path == path
    assert f"{path} has 2 channels: expected 3 channels" in inp.error
    with pytest.raises(ValueError, match="two.nii.gz has 2 channels"):
        read_volume(inp)


def test_unreadable_volume_is_an_error_input_naming_it(tmp_path, caplog):
    (tmp_path / "broken.nii.gz").write_bytes(b"not a nifti at all")
    with caplog.at_level(logging.ERROR, logger="pipeline.inference"):
        [inp] = find_inputs(tmp_path)
    assert inp.n_slices == 0 and f"cannot read {tmp_path / 'broken.nii.gz'}" in inp.error
    assert "is the file complete?" in inp.error
    assert inp.error in caplog.text


def test_empty_or_unrecognisable_folder(tmp_path):
    (tmp_path / "notes.txt").write_text("nothing to segment")
    with pytest.raises(DatasetError, match=f"{tmp_path}.*holds nothing to segment.*expected"):
        find_inputs(tmp_path)
    with pytest.raises(DatasetError, match="does not exist"):
        find_inputs(tmp_path / "missing")


def test_dicom_patient_of_three_series(tmp_path):
    """One folder per sequence, found by folder name; FLAIR's geometry is the mask's."""
    import itk

    data, out = tmp_path / "in", tmp_path / "out"
    flair = np.transpose(nifti_volume((32, 32), 4), (2, 1, 0)).astype(np.uint16)  # (k, j, i)
    study = "1.2.826.0.1.3680043.8.498.1"
    geometry = {"spacing": (0.5, 0.8, 2.5), "origin": (1.0, 2.0, 3.0), "study_uid": study}
    write_dicom_series(data / "patient7" / "flair", flair, description="AX FLAIR", **geometry)
    write_dicom_series(data / "patient7" / "t1", 1000 - flair, description="AX T1", **geometry)
    write_dicom_series(data / "patient7" / "t1_post", 1000 - flair, description="AX T1 +C", **geometry)

    [inp] = find_inputs(data)
    assert (inp.kind, inp.name, inp.n_slices, inp.error) == ("patient", "patient7", 4, "")
    assert inp.sequences == {
        r: data / "patient7" / f for r, f in [("flair", "flair"), ("t1", "t1"), ("t1c", "t1_post")]
    }
    assert [p.name for p in inp.dicom_files] == ["IM0000", "IM0001", "IM0002", "IM0003"]

    csv_path = run_inference(data, BrightFlair(), out, image_size=32)

    result = itk.imread(str(out / "patient7_mask.nii.gz"))
    np.testing.assert_array_equal(itk.array_from_image(result), (flair > 500).astype(np.uint8))
    np.testing.assert_allclose(tuple(result.GetSpacing()), (0.5, 0.8, 2.5))
    np.testing.assert_allclose(tuple(result.GetOrigin()), (1.0, 2.0, 3.0))
    row = read_csv(csv_path)[0]
    assert (row["input"], row["n_slices"]) == ("patient7", "4")


def test_output_dir_inside_the_inputs_is_refused(tmp_path):
    patient = "TCGA_AA_0001_20000101"
    write_patient(tmp_path, patient, 2, with_mask=True)
    truth = tifffile.imread(tmp_path / patient / f"{patient}_1_mask.tif")
    with pytest.raises(ValueError, match="overwriting any masks there; choose another output_dir"):
        run_inference(tmp_path, BrightFlair(), tmp_path, image_size=32)
    np.testing.assert_array_equal(tifffile.imread(tmp_path / patient / f"{patient}_1_mask.tif"), truth)


def test_slices_without_patient_folders_get_the_layout_hint(tmp_path):
    tifffile.imwrite(tmp_path / "TCGA_AA_0001_20000101_1.tif", np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(DatasetError, match="holds .tif files directly instead of patient folders"):
        find_inputs(tmp_path)


def rotation_x(degrees: float) -> np.ndarray:
    """Rotation about the left-right axis: tilts axial slices toward coronal."""
    c, s = np.cos(np.radians(degrees)), np.sin(np.radians(degrees))
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


def nifti_with_axes(path: Path, directions: np.ndarray, n: int = 4, channels: int | None = 3) -> np.ndarray:
    """A (32, 24, n[, channels]) volume whose voxel axes i, j, k point along the columns of
    ``directions`` (RAS); returns its FLAIR (32, 24, n)."""
    affine = np.eye(4)
    affine[:3, :3] = directions
    nib.save(nib.Nifti1Image(nifti_volume((32, 24), n, channels), affine), path)
    return nifti_volume((32, 24), n)


def itk_with_direction(path: Path, direction_lps: np.ndarray) -> None:
    import itk

    flair = np.transpose(nifti_volume((32, 24), 4), (2, 1, 0))  # (k, j, i)
    image = itk.image_from_array(np.ascontiguousarray(flair.astype(np.int16)))
    image.SetDirection(itk.matrix_from_array(np.ascontiguousarray(direction_lps, dtype=float)))
    itk.imwrite(image, str(path))


def test_sagittal_nifti_is_refused_naming_file_orientation_and_fix(tmp_path, monkeypatch):
    # i -> posterior, j -> superior, k -> right: sagittal slices, axis codes "PSR"
    directions = np.array([[0.0, 0.0, 1.2], [-0.9, 0.0, 0.0], [0.0, 0.9, 0.0]])
    path = tmp_path / "in" / "sag.nii.gz"
    path.parent.mkdir()
    nifti_with_axes(path, directions, channels=None)
    [refused] = find_inputs(tmp_path / "in", allow_flair_only=True)
    message = refused.error
    assert refused.n_slices == 0 and str(path) in message
    assert "slices are sagittal, not axial" in message and "'PSR'" in message
    assert "runs left-right" in message and "Reslice it to axial first" in message
    # the suggested fix works: its output is accepted, in the training layout
    monkeypatch.chdir(tmp_path)
    exec(message.split("e.g. in Python: ")[1], {"nib": nib, "path": str(path)})
    [fixed] = find_inputs(tmp_path / "axial.nii.gz", allow_flair_only=True)
    assert fixed.n_slices == 24  # the 24 inferior-superior voxels (j) became the slices
    assert "".join(nib.aff2axcodes(nib.load(tmp_path / "axial.nii.gz").affine)) == "LPS"


@pytest.mark.parametrize("suffix", [".mha", ".nrrd"])
def test_coronal_itk_volume_is_refused_naming_file_orientation_and_fix(tmp_path, monkeypatch, suffix):
    import itk

    # DICOM-style coronal (LPS): i -> left, j -> inferior, k -> posterior; axis codes "LIP"
    direction = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]])
    path = tmp_path / f"cor{suffix}"
    itk_with_direction(path, direction)
    [refused] = find_inputs(path, allow_flair_only=True)
    message = refused.error
    assert refused.n_slices == 0 and str(path) in message
    assert "slices are coronal, not axial" in message and "'LIP'" in message
    assert "runs anterior-posterior" in message
    monkeypatch.chdir(tmp_path)
    exec(message.split("e.g. in Python: ")[1], {"itk": itk, "path": str(path)})
    [fixed] = find_inputs(tmp_path / "axial.nrrd", allow_flair_only=True)
    assert fixed.n_slices == 24  # the 24 inferior-superior voxels (j) became the slices


def test_a_sagittal_volume_among_good_ones_is_an_error_input_the_others_are_not(tmp_path):
    data = tmp_path / "in"
    write_patient(data, "TCGA_AA_0001_20000101", 2)
    nifti_with_axes(data / "a_good.nii.gz", np.diag([-1.0, -1.0, 1.0]))
    nifti_with_axes(data / "z_sagittal.nii.gz", np.array([[0.0, 0, 1], [-1, 0, 0], [0, 1, 0]]))
    inputs = {inp.name: inp for inp in find_inputs(data)}
    assert [(n, i.n_slices, i.error) for n, i in inputs.items() if n != "z_sagittal.nii.gz"] == [
        ("TCGA_AA_0001_20000101", 2, ""),
        ("a_good.nii.gz", 4, ""),
    ]
    bad = inputs["z_sagittal.nii.gz"]
    assert bad.n_slices == 0 and bad.error.startswith(f"{data / 'z_sagittal.nii.gz'}: slices are sagittal")


@pytest.mark.parametrize(
    ("name", "directions", "warning"),
    [
        ("training layout LPS", np.diag([-1.0, -1.0, 1.0]), None),
        ("slices flipped LPI", np.diag([-1.0, -1.0, -1.0]), None),
        ("left-right flipped RPS", np.diag([1.0, -1.0, 1.0]), None),
        ("oblique 20 degrees", rotation_x(20) @ np.diag([-1.0, -1.0, 1.0]), None),
        ("upside down LAS", np.diag([-1.0, 1.0, 1.0]), "rows run posterior->anterior"),
        ("transposed ALS", np.array([[0.0, -1, 0], [1, 0, 0], [0, 0, 1]]), "rows and columns are swapped"),
    ],
)
def test_axial_volumes_are_accepted_flipped_or_oblique(tmp_path, caplog, name, directions, warning):
    data, out = tmp_path / "in", tmp_path / "out"
    data.mkdir()
    volume = nifti_with_axes(data / "scan.nii.gz", directions)

    with caplog.at_level(logging.INFO, logger="pipeline.inference.orientation"):
        run_inference(data, BrightFlair(), out, image_size=32)

    # the mask comes back in the input's own voxel grid, whatever the affine says
    mask = np.asarray(nib.load(out / "scan_mask.nii.gz").dataobj)
    assert np.mean(mask.astype(bool) == (volume > 500)) > 0.97
    records = [r for r in caplog.records if r.name == "pipeline.inference.orientation"]
    warnings = [r.getMessage() for r in records if r.levelno >= logging.WARNING]
    if warning is None:
        assert warnings == [], name
    else:
        assert len(warnings) == 1 and warning in warnings[0] and "scan.nii.gz" in warnings[0], warnings
    if "oblique" in name:
        assert "oblique axial slices (tilted 20 degrees" in caplog.text


@pytest.mark.parametrize(("degrees", "refused"), [(20, False), (40, False), (50, True)])
def test_oblique_itk_volume_is_axial_while_closest_to_superior_inferior(tmp_path, degrees, refused):
    # ITK directions are LPS: tilting the slice axis toward posterior, past 45 degrees it is coronal
    path = tmp_path / "tilted.mha"
    itk_with_direction(path, rotation_x(degrees))
    [inp] = find_inputs(path, allow_flair_only=True)
    if refused:
        assert inp.n_slices == 0 and f"{path}: slices are coronal" in inp.error
    else:
        assert (inp.n_slices, inp.error) == (4, "")
