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


def _resize(config: dict) -> dict:
    """The chain's Resized of image and label (found by what it is, not by its position)."""
    return next(
        t
        for t in config["deterministic_transforms"]
        if t.get("_target_") == "Resized" and "image" in t["keys"]
    )


def _volume_config() -> dict:
    config = json.loads(TRAIN_CONFIG.read_text())
    config["intensity"] = "volume"
    return config


def _slice_config() -> dict:
    """train.json with the tutorial's per-slice intensity (tutorial.json's; the default is "volume")."""
    config = json.loads(TRAIN_CONFIG.read_text())
    config["intensity"] = "slice"
    return config


@pytest.mark.parametrize("shape", [(256, 256), (240, 200), (128, 128), (96, 96), (130, 131)])
@pytest.mark.parametrize("size", [128, 64])
def test_a_tiff_slice_gets_the_numbers_of_monais_chain(tmp_path, shape, size):
    rng = np.random.default_rng(sum(shape) + size)
    image = rng.integers(3, 250, size=(*shape, 3), dtype=np.uint8)
    image[: shape[0] // 3] = 0  # background, as a real slice has
    path = tmp_path / "slice.tif"
    tifffile.imwrite(path, image, photometric="rgb")
    load, chain = _split(image_preprocessing(size, _slice_config()))
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
    load, chain = _split(image_preprocessing(64, _slice_config()))
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
    load, chain = _split(image_preprocessing(64, _slice_config()))
    others = [
        transforms.ComposeWithoutMeta([*chain.transforms[:2], chain.transforms[3]]),  # no Resized
        transforms.ComposeWithoutMeta([chain.transforms[2], chain.transforms[0], *chain.transforms[3:]]),
    ]
    for other in others:
        assert fast_slice_chain(load, other) is None
    config = json.loads(TRAIN_CONFIG.read_text())
    _resize(config)["mode"] = ["bilinear", "nearest-exact"]
    load, chain = _split(image_preprocessing(64, config))
    assert fast_slice_chain(load, chain) is None
    config = json.loads(TRAIN_CONFIG.read_text())
    config["deterministic_transforms"][0]["dtype"] = "$np.float32"
    config.setdefault("imports", []).append("$import numpy as np")
    load, chain = _split(image_preprocessing(64, config))
    assert load.transforms[0]._loader.dtype == np.float32
    assert fast_slice_chain(load, chain) is None  # loading converts: MONAI's chain
    assert fast_slice_chain(None, chain) is not None  # the slice part alone is train.json's


def _hand_crop_then_area(image: np.ndarray, box, size: int, scale: str, bounds=None) -> np.ndarray:
    """numpy + torch by hand: (slice) min-max over the whole slice; crop to the box, zeros past the
    image; area resize; (volume) clip each channel to its bounds and scale."""
    chw = image.astype(np.float64)
    if scale == "slice":
        chw = (chw - chw.min()) / (chw.max() - chw.min())
    top, left, bottom, right = box
    out = np.zeros((chw.shape[0], bottom - top, right - left))
    r0, r1, c0, c1 = max(top, 0), min(bottom, chw.shape[1]), max(left, 0), min(right, chw.shape[2])
    out[:, r0 - top : r1 - top, c0 - left : c1 - left] = chw[:, r0:r1, c0:c1]
    resized = torch.nn.functional.adaptive_avg_pool2d(torch.from_numpy(out)[None], (size, size))[0].numpy()
    if scale == "volume":
        b = np.asarray(bounds, np.float64)
        lo, width = b[:, :1, None], (b[:, 1:, None] - b[:, :1, None])
        resized = np.clip((resized - lo) / width, 0, 1)
    return resized


@pytest.mark.parametrize("intensity", ["slice", "volume"])
@pytest.mark.parametrize("box", [[20, 30, 180, 190], [-12, -4, 148, 156], [0, 0, 240, 200]])
def test_crop_head_gets_the_numbers_of_monais_chain(tmp_path, intensity, box):
    config = json.loads(TRAIN_CONFIG.read_text()) | {"crop": "head", "intensity": intensity}
    load, chain = _split(image_preprocessing(64, config))
    fast = fast_slice_chain(load, chain)
    assert fast is not None and fast.box_key == "head_box" and fast.scale == intensity
    assert fast_slice_chain(None, chain) is not None
    rng = np.random.default_rng(len(intensity) + abs(box[0]))
    image = rng.integers(3, 250, size=(240, 200, 3), dtype=np.uint8)
    path = tmp_path / "slice.tif"
    tifffile.imwrite(path, image, photometric="rgb")
    record = {"head_box": box, "intensity": [[10.0, 200.0], [0.0, 250.0], [30.0, 220.0]]}
    expected = chain({**record, "image": load({"image": str(path)})["image"].as_tensor()})["image"]
    array, _, _ = fast.read_tiff(str(path))
    got = fast({**record, "image": array})["image"]
    assert got.shape == expected.shape == (3, 64, 64)
    np.testing.assert_allclose(got.numpy(), np.asarray(expected), atol=1e-5)
    by_hand = _hand_crop_then_area(array, box, 64, intensity, record["intensity"])
    np.testing.assert_allclose(got.numpy(), by_hand, atol=1e-5)


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
