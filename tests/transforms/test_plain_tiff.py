"""transforms.plain_tiff: the hand-read files equal tifffile's reading, the written bytes tifffile's own."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import tifffile

from pipeline.data.phantom import generate_dataset
from transforms.plain_tiff import read_plain_tiff, tiff_bytes, write_bytes
from transforms.reader import read_tiff


def _tifffile(path: Path) -> tuple[np.ndarray, str]:
    with tifffile.TiffFile(path) as tif:
        page = tif.pages.first
        return page.asarray(), page.axes


def _same(path: Path) -> None:
    array, axes = read_plain_tiff(path)
    expected, expected_axes = _tifffile(path)
    assert axes == expected_axes
    assert array.dtype == expected.dtype and array.shape == expected.shape
    np.testing.assert_array_equal(array, expected)
    assert array.flags.writeable  # as tifffile's


def test_phantom_slices_and_masks_read_as_tifffile_reads_them(tmp_path):
    generate_dataset(tmp_path / "data", n_patients=1, seed=0)
    files = sorted((tmp_path / "data").glob("*/*.tif"))
    assert any(f.stem.endswith("_mask") for f in files) and len(files) > 10
    for path in files:
        _same(path)


@pytest.mark.parametrize(
    "shape, options",
    [
        ((6, 10, 3), {"photometric": "rgb"}),
        ((6, 10), {"photometric": "minisblack"}),
        ((37, 11, 3), {"photometric": "rgb", "rowsperstrip": 4}),  # several contiguous strips
        ((5, 9), {"photometric": "minisblack", "metadata": None}),
        ((5, 9, 3), {"photometric": "rgb", "bigtiff": False, "byteorder": ">"}),
    ],
)
def test_plain_layouts(tmp_path, shape, options):
    rng = np.random.default_rng(0)
    path = tmp_path / "x.tif"
    tifffile.imwrite(path, rng.integers(0, 256, shape, dtype=np.uint8), **options)
    _same(path)


@pytest.mark.parametrize(
    "array, options",
    [
        (np.ones((8, 8, 3), np.uint8), {"photometric": "rgb", "compression": "zlib"}),
        (np.ones((8, 8, 3), np.uint8), {"photometric": "rgb", "planarconfig": "separate"}),
        (np.ones((32, 32), np.uint8), {"tile": (16, 16)}),
        (np.ones((8, 8), np.uint16), {}),
        (np.ones((8, 8), np.int8), {}),
        (np.ones((8, 8), np.float32), {}),
        (np.ones((8, 8, 4), np.uint8), {"photometric": "rgb"}),
        (np.ones((2, 8, 8), np.uint8), {"photometric": "minisblack"}),  # two pages
        (np.ones((8, 8), np.uint8), {"bigtiff": True}),
        (np.ones((8, 8), np.uint8), {"photometric": "miniswhite"}),
    ],
)
def test_other_layouts_are_left_to_tifffile(tmp_path, array, options):
    path = tmp_path / "x.tif"
    tifffile.imwrite(path, array, **options)
    assert read_plain_tiff(path) is None
    read, _ = read_tiff(path)  # tifffile's reading, as before
    np.testing.assert_array_equal(read, tifffile.imread(path) if array.ndim < 3 else read)


def test_damaged_files_are_left_to_tifffile(tmp_path):
    good = tmp_path / "good.tif"
    tifffile.imwrite(good, np.ones((64, 64, 3), np.uint8), photometric="rgb")
    data = good.read_bytes()
    for name, content in [("half", data[: len(data) // 2]), ("head", data[:100]), ("empty", b"")]:
        path = tmp_path / f"{name}.tif"
        path.write_bytes(content)
        assert read_plain_tiff(path) is None, name
    (tmp_path / "text.tif").write_text("not an image\n")
    assert read_plain_tiff(tmp_path / "text.tif") is None
    assert read_plain_tiff(tmp_path / "missing.tif") is None


@pytest.mark.parametrize("shape", [(256, 256), (240, 256), (7, 13), (1, 1)])
def test_written_bytes_are_tifffiles(tmp_path, shape):
    rng = np.random.default_rng(1)
    mask = (rng.random(shape) > 0.7).astype(np.uint8) * np.uint8(255)
    expected = io.BytesIO()
    tifffile.imwrite(expected, mask)
    data = tiff_bytes(mask)
    assert data == expected.getvalue()
    assert tiff_bytes(np.zeros(shape, np.uint8)) != data or not mask.any()
    write_bytes(tmp_path / "m.tif", data)
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "m.tif"), mask)
    strided = np.zeros((shape[0], 2 * shape[1]), np.uint8)
    strided[:, ::2] = mask
    assert tiff_bytes(strided[:, ::2]) == data  # a view that is not contiguous


def test_other_arrays_are_written_by_tifffile():
    for array in [np.ones((4, 5), np.uint16), np.ones((4, 5, 3), np.uint8), np.ones(6, np.uint8)]:
        expected = io.BytesIO()
        tifffile.imwrite(expected, array)
        assert tiff_bytes(array) == expected.getvalue()
