"""TiffReader: orientation (no transposition), dtype, metadata and errors that name the file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from monai.bundle import ConfigParser
from monai.data.utils import is_no_channel
from monai.transforms import Compose, EnsureChannelFirstd, LoadImage, LoadImaged

from transforms import TiffReader, TiffReadError

H, W = 6, 10  # H != W so a transposition changes the shape


def _rgb() -> np.ndarray:
    """Every value distinct (30 * row + 3 * column + channel), so any axis swap or flip shows."""
    r, k, c = np.meshgrid(np.arange(H), np.arange(W), np.arange(3), indexing="ij")
    return (30 * r + 3 * k + c).astype(np.uint8)


def _mask() -> np.ndarray:
    m = np.zeros((H, W), np.uint8)
    m[1:3, 2:7] = 255
    m[4, 8] = 255
    return m


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    image, mask = tmp_path / "slice_1.tif", tmp_path / "slice_1_mask.tif"
    tifffile.imwrite(image, _rgb(), photometric="rgb", metadata=None)
    tifffile.imwrite(mask, _mask(), photometric="minisblack", metadata=None)
    return {"image": image, "label": mask}


def _load(files: dict[str, Path], **kwargs) -> dict:
    chain = Compose(
        [
            LoadImaged(["image", "label"], reader=TiffReader(), image_only=True, **kwargs),
            EnsureChannelFirstd(["image", "label"]),
        ]
    )
    return chain({k: str(v) for k, v in files.items()})


def test_rgb_and_mask_keep_rows_and_columns(files):
    out = _load(files, dtype=None)
    stored_rgb, stored_mask = tifffile.imread(files["image"]), tifffile.imread(files["label"])
    assert out["image"].shape == (3, H, W)
    assert out["label"].shape == (1, H, W)
    image, label = out["image"].numpy(), out["label"].numpy()
    for c, r, k in [(0, 0, 0), (2, 5, 9), (1, 3, 7), (0, 4, 1)]:
        assert image[c, r, k] == stored_rgb[r, k, c] == 30 * r + 3 * k + c
    np.testing.assert_array_equal(image, np.moveaxis(stored_rgb, -1, 0))
    np.testing.assert_array_equal(label[0], stored_mask)
    assert label[0, 4, 8] == 255 and label[0, 1, 2] == 255 and label[0, 2, 1] == 0


def test_dtype_is_kept_unless_asked(files):
    out = _load(files, dtype=None)
    assert out["image"].dtype == torch.uint8 and out["label"].dtype == torch.uint8
    array, _ = TiffReader().get_data(TiffReader().read(files["image"]))
    assert array.dtype == np.uint8
    array, _ = TiffReader(dtype=np.float32).get_data(TiffReader().read(files["image"]))
    assert array.dtype == np.float32
    np.testing.assert_array_equal(array, _rgb().astype(np.float32))
    # LoadImaged's own default dtype (float32) still applies on top of the reader
    assert _load(files)["image"].dtype == torch.float32


def test_metadata(files):
    reader = TiffReader()
    _, meta = reader.get_data(reader.read(files["image"]))
    np.testing.assert_array_equal(meta["spatial_shape"], [H, W])
    assert meta["original_channel_dim"] == -1
    np.testing.assert_array_equal(meta["affine"], np.eye(3))
    np.testing.assert_array_equal(meta["original_affine"], np.eye(3))
    assert meta["filename_or_obj"] == str(files["image"])
    _, meta = reader.get_data(reader.read(files["label"]))
    np.testing.assert_array_equal(meta["spatial_shape"], [H, W])
    assert is_no_channel(meta["original_channel_dim"])


def test_a_sequence_of_masks_stacks_as_channels(files, tmp_path):
    other = tmp_path / "other_mask.tif"
    tifffile.imwrite(other, 255 - _mask(), photometric="minisblack")
    out = LoadImage(reader=TiffReader(), image_only=True, ensure_channel_first=True, dtype=None)(
        [str(files["label"]), str(other)]
    )
    assert out.shape == (2, H, W)
    np.testing.assert_array_equal(out[1].numpy(), 255 - _mask())


def test_verify_suffix():
    reader = TiffReader()
    assert reader.verify_suffix("a/b/TCGA_CS_4941_19960909_1.tif")
    assert reader.verify_suffix(Path("x.TIFF"))
    assert reader.verify_suffix(["x.Tif", "y.tiff"])
    assert not reader.verify_suffix(["x.tif", "y.png"])
    assert not reader.verify_suffix("x.tif.gz")
    assert not reader.verify_suffix("x.nii.gz")


def _damaged(tmp_path: Path, kind: str) -> Path:
    path = tmp_path / f"broken_{kind}_7.tif"
    if kind == "truncated":
        good = tmp_path / "good.tif"
        tifffile.imwrite(good, np.ones((64, 64, 3), np.uint8), photometric="rgb")
        path.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    elif kind == "text":
        path.write_text("this is not an image\n")
    elif kind == "empty":
        path.write_bytes(b"")
    return path  # "missing": never written


@pytest.mark.parametrize("kind", ["truncated", "text", "empty", "missing"])
def test_unreadable_files_raise_naming_the_file(tmp_path, kind):
    path = _damaged(tmp_path, kind)
    reader = TiffReader()
    with pytest.raises(TiffReadError, match=f"{path.name}.*expected") as info:
        reader.get_data(reader.read(path))
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("kind", ["truncated", "text", "missing"])
def test_loadimaged_reports_our_error_not_another_readers(tmp_path, files, kind):
    # LoadImage falls back to its other readers when a reader's read() fails; PILReader then
    # reports a truncated file without its name. Our error must be the cause the user sees.
    path = _damaged(tmp_path, kind)
    with pytest.raises(RuntimeError) as info:
        _load({"image": path, "label": files["label"]})
    cause = info.value.__cause__
    assert isinstance(cause, TiffReadError), repr(cause)
    assert path.name in str(cause) and "expected" in str(cause)
    with pytest.raises(TiffReadError, match=path.name):  # without Compose, nothing wraps it
        LoadImaged(["image"], reader=TiffReader())({"image": str(path)})


def test_read_rejects_options(files):
    with pytest.raises(TypeError, match="series"):
        TiffReader().read(files["image"], series=1)


def test_bundle_config_reference_parses(files):
    """The exact JSON of bundle/configs/train.json, parsed by MONAI's ConfigParser."""
    config = {
        "imports": ["$import transforms"],
        "load": {
            "_target_": "LoadImaged",
            "keys": ["image", "label"],
            "reader": "$transforms.TiffReader()",
            "image_only": True,
        },
        # the dotted class path works too: LoadImage instantiates a reader given by name
        "load_by_name": {"_target_": "LoadImaged", "keys": ["image"], "reader": "transforms.TiffReader"},
    }
    parser = ConfigParser(config)
    for key in ("load", "load_by_name"):
        load = parser.get_parsed_content(key)
        assert isinstance(load._loader.readers[-1], TiffReader)
    out = parser.get_parsed_content("load")({k: str(v) for k, v in files.items()})
    assert out["image"].shape == (H, W, 3)  # channel-last until EnsureChannelFirstd
    np.testing.assert_array_equal(out["image"].numpy(), _rgb())
