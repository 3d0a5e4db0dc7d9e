"""Sequences on other grids are resampled onto FLAIR's by their physical geometry.

The content is a linear function of the patient position, f(x, y, z) = 120 + x + 1.5 y + 2 z (LPS
mm, values 75..162, so that no window applies): linear interpolation reproduces it exactly, so
wherever a sequence covers FLAIR's grid the resampled value is f at FLAIR's voxel, computed here
with numpy from the grids alone.
"""

from __future__ import annotations

import logging
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from pipeline.inference.inputs import find_inputs
from pipeline.inference.volumes import read_volume
from tests.dicom_support import write_dicom_series

LPS = np.diag([-1.0, -1.0, 1.0])
FLAIR_SHAPE = (24, 20, 8)  # (i, j, k)
FLAIR = {"origin": np.array([-12.0, -10.0, -9.0]), "axes": np.diag([1.0, 1.0, 2.5])}  # LPS, columns i, j, k


def f(points: np.ndarray) -> np.ndarray:
    """The content at LPS points (..., 3)."""
    return 120.0 + points[..., 0] + 1.5 * points[..., 1] + 2.0 * points[..., 2]


def rotation_z(degrees: float) -> np.ndarray:
    c, s = np.cos(np.radians(degrees)), np.sin(np.radians(degrees))
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def centres(grid: dict, shape: tuple[int, int, int]) -> np.ndarray:
    """LPS voxel centres (i, j, k, 3) of a grid: origin + axes @ (i, j, k)."""
    index = np.stack(np.indices(shape), axis=-1).astype(float)
    return grid["origin"] + index @ grid["axes"].T


def write_nifti_on(path: Path, grid: dict, shape, data_ijk: np.ndarray) -> None:
    affine = np.eye(4)
    affine[:3, :3], affine[:3, 3] = LPS @ grid["axes"], LPS @ grid["origin"]
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data_ijk.astype(np.float32), affine), path)


def write_flair(folder: Path, fmt: str) -> np.ndarray:
    """FLAIR on FLAIR's grid as NIfTI or DICOM (8-bit content); returns it as (k, j, i)."""
    flair = np.random.default_rng(0).integers(1, 255, FLAIR_SHAPE).astype(np.uint8)
    if fmt == "nifti":
        write_nifti_on(folder / "flair.nii.gz", FLAIR, FLAIR_SHAPE, flair)
    else:
        spacing = tuple(np.diag(FLAIR["axes"]))
        write_dicom_series(
            folder / "flair", flair.transpose(2, 1, 0), spacing=spacing, origin=FLAIR["origin"], bits=8
        )
    return flair.transpose(2, 1, 0).astype(np.float32)


def index_in(grid: dict, points: np.ndarray) -> np.ndarray:
    """Continuous voxel index (i, j, k) of LPS points in a grid (numpy, from the grid alone)."""
    return (points - grid["origin"]) @ np.linalg.inv(grid["axes"]).T


# another grid: other spacing, rotated 10 degrees in plane, rows and slices running the other way,
# reaching past FLAIR's field of view except on the patient's right (from x = -8 mm at its origin)
OTHER = {"origin": np.array([-8.0, 14.0, 12.0]), "axes": rotation_z(10) @ np.diag([0.7, -1.3, -1.9])}
OTHER_SHAPE = (36, 24, 14)


@pytest.mark.parametrize("fmt", ["nifti", "dicom"])
def test_a_t1_on_another_grid_equals_the_t1_on_flairs_grid_where_it_covers_it(tmp_path, fmt):
    flair_points = centres(FLAIR, FLAIR_SHAPE)
    write_flair(tmp_path / "same", fmt)
    write_nifti_on(tmp_path / "same" / "t1.nii.gz", FLAIR, FLAIR_SHAPE, f(flair_points))
    write_flair(tmp_path / "other", fmt)
    write_nifti_on(tmp_path / "other" / "t1.nii.gz", OTHER, OTHER_SHAPE, f(centres(OTHER, OTHER_SHAPE)))

    inputs = {inp.name: inp for inp in find_inputs(tmp_path)}
    same, other = read_volume(inputs["same"])[:, 0], read_volume(inputs["other"])[:, 0]

    expected = f(flair_points).transpose(2, 1, 0)  # (k, j, i)
    np.testing.assert_allclose(same, expected, atol=1e-3)
    # where FLAIR's voxel lies between the other grid's voxel centres: f exactly; more than half a
    # voxel outside: background 0; the half-voxel band between them: ITK's edge handling
    index = index_in(OTHER, flair_points).transpose(2, 1, 0, 3)
    size = np.array(OTHER_SHAPE) - 1
    inside = np.all((index >= -1e-6) & (index <= size + 1e-6), axis=-1)
    outside = np.any((index < -0.5 - 1e-6) | (index > size + 0.5 + 1e-6), axis=-1)
    assert inside.mean() > 0.6 and outside.sum() > 0  # both regions are tested
    np.testing.assert_allclose(other[inside], same[inside], atol=1e-3)
    np.testing.assert_array_equal(other[outside], 0.0)
    band = ~inside & ~outside
    assert band.mean() < 0.1  # a few boundary voxels


def test_a_post_contrast_dicom_series_on_a_rotated_grid(tmp_path):
    """FLAIR NIfTI, post-contrast T1 a DICOM series rotated in plane (8-bit: f rounded, so
    within 0.5 of f)."""
    write_flair(tmp_path / "P", "nifti")
    write_nifti_on(tmp_path / "P" / "t1.nii.gz", FLAIR, FLAIR_SHAPE, f(centres(FLAIR, FLAIR_SHAPE)))
    rotation = rotation_z(-12)
    grid = {"origin": np.array([-20.0, -16.0, -12.0]), "axes": rotation @ np.diag([0.9, 1.1, 2.0])}
    shape = (36, 32, 13)
    content = np.round(f(centres(grid, shape))).astype(np.uint8)
    orientation = (*rotation[:, 0], *rotation[:, 1])  # row direction (i), column direction (j)
    write_dicom_series(
        tmp_path / "P" / "t1_post",
        content.transpose(2, 1, 0),
        spacing=(0.9, 1.1, 2.0),
        origin=grid["origin"],
        orientation=orientation,
        description="AX T1 POST",
        bits=8,
    )

    [inp] = find_inputs(tmp_path)
    assert inp.sequences["t1c"] == tmp_path / "P" / "t1_post" and inp.error == ""
    t1c = read_volume(inp)[:, 2]

    flair_points = centres(FLAIR, FLAIR_SHAPE)
    index = index_in(grid, flair_points).transpose(2, 1, 0, 3)
    inside = np.all((index >= 0) & (index <= np.array(shape) - 1), axis=-1)
    assert inside.all()  # this grid covers all of FLAIR's
    np.testing.assert_allclose(t1c, f(flair_points).transpose(2, 1, 0), atol=0.5 + 1e-3)


def test_resampling_follows_the_geometry_not_the_voxel_order(tmp_path):
    """The T1 on FLAIR's grid, stored with its voxel axes i and j reversed (the RAS layout
    dcm2niix writes): the same voxels come back, which copying the array would not give."""
    flair_points = centres(FLAIR, FLAIR_SHAPE)
    write_flair(tmp_path / "P", "nifti")
    n_i, n_j, _ = FLAIR_SHAPE
    reversed_grid = {
        "origin": FLAIR["origin"] + FLAIR["axes"] @ np.array([n_i - 1, n_j - 1, 0.0]),
        "axes": FLAIR["axes"] @ np.diag([-1.0, -1.0, 1.0]),
    }
    write_nifti_on(tmp_path / "P" / "t1.nii.gz", reversed_grid, FLAIR_SHAPE, f(flair_points)[::-1, ::-1])
    assert "".join(nib.aff2axcodes(nib.load(tmp_path / "P" / "t1.nii.gz").affine)) == "RAS"

    [inp] = find_inputs(tmp_path)
    np.testing.assert_allclose(read_volume(inp)[:, 0], f(flair_points).transpose(2, 1, 0), atol=1e-3)


def test_a_sequence_elsewhere_in_space_is_background_with_a_warning(tmp_path, caplog):
    write_flair(tmp_path / "P", "nifti")
    far = {"origin": FLAIR["origin"] + 500.0, "axes": FLAIR["axes"]}
    write_nifti_on(tmp_path / "P" / "t1.nii.gz", far, FLAIR_SHAPE, f(centres(FLAIR, FLAIR_SHAPE)))
    [inp] = find_inputs(tmp_path)
    with caplog.at_level(logging.WARNING, logger="pipeline.inference"):
        slices = read_volume(inp)
    np.testing.assert_array_equal(slices[:, 0], 0.0)
    assert (
        f"{tmp_path / 'P'}: t1 ({tmp_path / 'P' / 't1.nii.gz'}) covers only 0% of FLAIR's field of view"
        in caplog.text
    )
