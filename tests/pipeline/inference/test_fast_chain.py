"""The fast slice preprocessing against MONAI's chain of train.json, on real TIFF files and arrays."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
import torch
from monai.transforms import Compose

import transforms
from pipeline.inference.fast_chain import fast_slice_chain
from pipeline.inference.preprocessing import TRAIN_CONFIG, image_preprocessing


def _split(preprocessing: Compose) -> tuple[Compose, transforms.ComposeWithoutMeta]:
    return Compose(list(preprocessing.transforms[:2])), transforms.ComposeWithoutMeta(
        list(preprocessing.transforms[2:])
    )


def _volume_config() -> dict:
    config = json.loads(TRAIN_CONFIG.read_text())
    config["intensity"] = "volume"
    return config


@pytest.mark.parametrize("shape", [(256, 256), (240, 200), (128, 128), (96, 96), (130, 131)])
@pytest.mark.parametrize("size", [128, 64])
def test_a_tiff_slice_gets_the_numbers_of_monais_chain(tmp_path, shape, size):
    rng = np.random.default_rng(sum(shape) + size)
    image = rng.integers(3, 250, size=(*shape, 3), dtype=np.uint8)
    image[: shape[0] // 3] = 0  # background, as a real slice has
    path = tmp_path / "slice.tif"
    tifffile.imwrite(path, image, photometric="rgb")
    load, chain = _split(image_preprocessing(size))
    fast = fast_slice_chain(load, chain)
    assert fast is not None and fast.scale == "slice" and fast.side == size

    expected = chain({"image": load({"image": str(path)})["image"].as_tensor()})["image"]
    array, height, width = fast.read_tiff(str(path))
    got = fast({"image": array})["image"]

    assert (height, width) == shape
    assert got.dtype == torch.float32 and got.shape == expected.shape == (3, size, size)
    np.testing.assert_allclose(got.numpy(), np.asarray(expected), atol=1e-6)
    # by hand for the block case: mean of 2x2 blocks, scaled by the full slice's min and max
    if shape == (256, 256) and size == 128:
        chw = image.transpose(2, 0, 1).astype(np.float64)
        blocks = chw.reshape(3, 128, 2, 128, 2).mean(axis=(2, 4))
        np.testing.assert_allclose(got.numpy(), (blocks - chw.min()) / (chw.max() - chw.min()), atol=1e-6)


def test_a_flat_slice_is_zeros_as_in_monai(tmp_path):
    load, chain = _split(image_preprocessing(64))
    fast = fast_slice_chain(load, chain)
    flat = np.full((3, 128, 128), 77, dtype=np.uint8)
    expected = chain({"image": torch.as_tensor(flat)})["image"]
    got = fast({"image": flat})["image"]
    assert not got.any() and not np.asarray(expected).any()


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.uint16])
def test_a_volume_slice_with_volume_intensity_matches(dtype):
    _, chain = _split(image_preprocessing(64, _volume_config()))
    fast = fast_slice_chain(None, chain)
    assert fast is not None and fast.scale == "volume" and fast.bounds_key == "intensity"
    rng = np.random.default_rng(1)
    raw = (rng.random((3, 192, 160)) * 1000).astype(dtype)
    record = {"image": raw, "intensity": [[10.0, 900.0], [0.0, 500.0], [100.0, 100.0]]}
    expected = chain({**record, "image": torch.as_tensor(raw.astype(np.float32))})["image"]
    got = fast(record)["image"]
    np.testing.assert_allclose(got.numpy(), np.asarray(expected), atol=1e-6)
    assert not got[2].any()  # a flat channel's bounds: 0, as the transform gives


def test_any_other_chain_is_left_to_monai():
    load, chain = _split(image_preprocessing(64))
    others = [
        transforms.ComposeWithoutMeta([*chain.transforms[:2], chain.transforms[3]]),  # no Resized
        transforms.ComposeWithoutMeta([chain.transforms[2], chain.transforms[0], *chain.transforms[3:]]),
    ]
    for other in others:
        assert fast_slice_chain(load, other) is None
    config = json.loads(TRAIN_CONFIG.read_text())
    config["deterministic_transforms"][4]["mode"] = ["bilinear", "nearest-exact"]
    load, chain = _split(image_preprocessing(64, config))
    assert fast_slice_chain(load, chain) is None
    config = json.loads(TRAIN_CONFIG.read_text())
    config["deterministic_transforms"][0]["dtype"] = "$np.float32"
    config.setdefault("imports", []).append("$import numpy as np")
    load, chain = _split(image_preprocessing(64, config))
    assert load.transforms[0]._loader.dtype == np.float32
    assert fast_slice_chain(load, chain) is None  # loading converts: MONAI's chain
    assert fast_slice_chain(None, chain) is not None  # the slice part alone is train.json's


@pytest.mark.parametrize("shape, side", [((256, 256), 128), ((256, 256), 64), ((240, 160), 80), ((9, 9), 9)])
def test_uint8_block_sums_give_the_float_path_numbers_exactly(shape, side):
    from pipeline.inference.fast_chain import _area, _area_uint8

    rng = np.random.default_rng(side)
    hwc = rng.integers(0, 256, size=(*shape, 3), dtype=np.uint8)
    hwc[:5] = 255  # the largest sums
    chw = np.moveaxis(hwc, -1, 0)  # as a TIFF slice is read: a view of the (H, W, C) file layout
    resized, stored = _area_uint8(chw, side)
    assert torch.equal(resized, _area(chw, side))
    np.testing.assert_array_equal(stored, chw)
    assert _area_uint8(chw.astype(np.uint16), side) is None
    assert _area_uint8(chw[:, :, :-1], side) is None  # not an integer factor
