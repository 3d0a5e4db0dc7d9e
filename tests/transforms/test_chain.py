"""The bundle's training chain, built by MONAI's ConfigParser, checked on real TIFF files.

LoadImaged(TiffReader) -> EnsureChannelFirstd -> ScaleIntensityd -> LesionMaskd -> RandZoomd
-> RandRotated -> RandFlipd, with the recipe's settings (zoom 0.95-1.05, +-15 degrees,
horizontal flip over columns, masks nearest-neighbour). Also LesionMaskd on its own.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import tifffile
import torch
from monai.bundle import ConfigParser
from monai.data import MetaTensor

from transforms import LesionMaskd, lesion_mask

H, W = 40, 56
SQUARE = (slice(6, 18), slice(34, 48))  # off-centre, so a flip or rotation moves it


def _chain_config(zoom=(0.95, 1.05), zoom_prob=1.0, degrees=15.0, rotate_prob=1.0, flip_prob=0.5) -> dict:
    """The chain as bundle/configs/train.json writes it, with the augmentation strengths as arguments."""
    keys = ["image", "label"]
    return {
        "imports": ["$import math", "$import transforms"],
        "augment": {
            "zoom_min": zoom[0],
            "zoom_max": zoom[1],
            "zoom_prob": zoom_prob,
            "rotate_degrees": degrees,
            "rotate_prob": rotate_prob,
            "flip_prob": flip_prob,
        },
        "deterministic": [
            {
                "_target_": "LoadImaged",
                "keys": keys,
                "reader": "$transforms.TiffReader()",
                "image_only": True,
            },
            {"_target_": "EnsureChannelFirstd", "keys": keys},
            {"_target_": "ScaleIntensityd", "keys": "image", "minv": 0.0, "maxv": 1.0},
            {"_target_": "transforms.LesionMaskd", "keys": "label"},
        ],
        "augmentations": [
            {
                "_target_": "RandZoomd",
                "keys": keys,
                "prob": "@augment#zoom_prob",
                "min_zoom": "@augment#zoom_min",
                "max_zoom": "@augment#zoom_max",
                "mode": ["bilinear", "nearest"],
                "keep_size": True,
            },
            {
                "_target_": "RandRotated",
                "keys": keys,
                "prob": "@augment#rotate_prob",
                "range_x": "$math.radians(@augment#rotate_degrees)",
                "mode": ["bilinear", "nearest"],
                "padding_mode": "zeros",
            },
            {"_target_": "RandFlipd", "keys": keys, "prob": "@augment#flip_prob", "spatial_axis": 1},
        ],
        "preprocessing": {"_target_": "Compose", "transforms": "$@deterministic + @augmentations"},
    }


def _chain(**strengths):
    return ConfigParser(_chain_config(**strengths)).get_parsed_content("preprocessing")


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> dict[str, str]:
    """A slice whose mask marks a bright square; dim, non-uniform background elsewhere."""
    folder = tmp_path_factory.mktemp("slice")
    rng = np.random.default_rng(3)
    image = rng.integers(20, 60, size=(H, W, 3), dtype=np.uint8)
    image += np.arange(W, dtype=np.uint8)[None, :, None] // 4  # a left-right gradient: flips show
    image[SQUARE] = rng.integers(230, 251, size=(12, 14, 3), dtype=np.uint8)
    mask = np.zeros((H, W), np.uint8)
    mask[SQUARE] = 255
    files = {
        "image": folder / "TCGA_CS_4941_19960909_3.tif",
        "label": folder / "TCGA_CS_4941_19960909_3_mask.tif",
    }
    tifffile.imwrite(files["image"], image, photometric="rgb", metadata=None)
    tifffile.imwrite(files["label"], mask, photometric="minisblack", metadata=None)
    return {k: str(v) for k, v in files.items()}


def _expected(pair: dict[str, str]) -> tuple[np.ndarray, np.ndarray]:
    """Min-max scaled image (C, H, W) and {0, 1} mask (1, H, W), computed with numpy alone."""
    stored = tifffile.imread(pair["image"]).astype(np.float64)
    scaled = (stored - stored.min()) / (stored.max() - stored.min())
    mask = (tifffile.imread(pair["label"]) > 127).astype(np.float32)
    return np.moveaxis(scaled, -1, 0), mask[None]


def _centroid(mask: np.ndarray) -> tuple[float, float]:
    rows, cols = np.nonzero(mask)
    return float(rows.mean()), float(cols.mean())


def _numpy(out: dict) -> tuple[np.ndarray, np.ndarray]:
    return out["image"].numpy(), out["label"].numpy()


def test_config_values_reach_the_transforms():
    parser = ConfigParser(_chain_config())
    zoom, rotate, flip = (parser.get_parsed_content(f"augmentations#{i}") for i in range(3))
    assert (list(zoom.rand_zoom.min_zoom), list(zoom.rand_zoom.max_zoom)) == ([0.95], [1.05])
    assert rotate.rand_rotate.range_x == pytest.approx((-0.2618, 0.2618), abs=1e-4)
    assert flip.flipper.spatial_axis == 1 and flip.prob == 0.5
    assert list(zoom.mode) == ["bilinear", "nearest"] and list(rotate.mode) == ["bilinear", "nearest"]


def test_zero_strength_augmentation_leaves_the_data_unchanged(pair):
    image, label = _numpy(_chain(zoom=(1.0, 1.0), degrees=0.0, flip_prob=0.0)(pair))
    expected_image, expected_label = _expected(pair)
    assert image.shape == (3, H, W) and label.shape == (1, H, W)
    assert image.dtype == np.float32 and label.dtype == np.float32
    np.testing.assert_allclose(image, expected_image, atol=1e-5)
    np.testing.assert_array_equal(label, expected_label)


def test_image_is_scaled_to_0_1_and_mask_stays_binary_after_augmentation(pair):
    chain = _chain()
    for seed in range(6):
        chain.set_random_state(seed=seed)
        image, label = _numpy(chain(pair))
        assert image.min() == pytest.approx(0.0, abs=1e-6) and image.max() <= 1.0 + 1e-6
        assert set(np.unique(label).tolist()) == {0.0, 1.0}  # nearest-neighbour: no in-between values
    data = dict(pair)
    for transform in ConfigParser(_chain_config()).get_parsed_content("deterministic"):
        data = transform(data)
    assert data["image"].min() == 0.0 and data["image"].max() == 1.0


def test_horizontal_flip_reverses_the_columns_of_image_and_mask(pair):
    image, label = _numpy(_chain(zoom=(1.0, 1.0), degrees=0.0, flip_prob=1.0)(pair))
    expected_image, expected_label = _expected(pair)
    np.testing.assert_allclose(image, expected_image[..., ::-1], atol=1e-5)  # fliplr of every channel
    np.testing.assert_array_equal(label[0], np.fliplr(expected_label[0]))
    # pinned: columns reverse, rows stay (the square moves from the right half to the left half)
    assert label[0, 6:18, 8:22].all() and not label[0, :, W // 2 :].any()


def test_same_seed_same_output(pair):
    chain = _chain()
    outputs = []
    for seed in (7, 7, 8):
        chain.set_random_state(seed=seed)
        outputs.append(_numpy(chain(pair)))
    for first, second in zip(outputs[0], outputs[1]):
        np.testing.assert_array_equal(first, second)
    assert not np.array_equal(outputs[0][0], outputs[2][0])  # a different seed does change the result


def test_image_and_mask_get_the_same_random_parameters(pair):
    chain = _chain(zoom=(0.8, 1.2), degrees=30.0)  # stronger than the recipe, so misalignment would show
    start = _centroid(_expected(pair)[1][0])
    shifts = []
    for seed in range(8):
        chain.set_random_state(seed=seed)
        image, label = _numpy(chain(pair))
        square = _centroid(image.mean(axis=0) > 0.5)
        lesion = _centroid(label[0])
        # the bright square and its mask move together; "nearest" in RandZoomd rounds the mask
        # by up to about 0.7 pixel relative to the bilinear image, so allow 1.5 pixels
        assert math.dist(square, lesion) < 1.5, f"seed {seed}: square at {square}, mask at {lesion}"
        shifts.append(math.dist(start, lesion))
    # every draw moved the square by more than the tolerance, so a mask left behind would fail
    assert min(shifts) > 1.5, shifts


def test_lesion_mask_on_numpy_torch_and_metatensor():
    stored = np.array([[0, 255, 127], [128, 1, 255]], np.uint8)
    expected = np.array([[0, 1, 0], [1, 0, 1]], np.float32)
    out = lesion_mask(stored, 127)
    assert isinstance(out, np.ndarray) and out.dtype == np.float32
    np.testing.assert_array_equal(out, expected)
    out = lesion_mask(torch.from_numpy(stored), 127)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32
    np.testing.assert_array_equal(out.numpy(), expected)
    meta = MetaTensor(torch.from_numpy(stored)[None], meta={"filename_or_obj": "x_mask.tif"})
    d = LesionMaskd("label")({"label": meta, "image": "untouched"})
    assert isinstance(d["label"], MetaTensor) and d["label"].dtype == torch.float32
    assert d["label"].meta["filename_or_obj"] == "x_mask.tif"
    np.testing.assert_array_equal(d["label"].numpy()[0], expected)
    assert d["image"] == "untouched"
    np.testing.assert_array_equal(lesion_mask(stored, threshold=0), stored > 0)


def test_lesion_maskd_missing_keys_and_bad_threshold():
    with pytest.raises(KeyError):
        LesionMaskd("label")({"image": np.zeros(2)})
    assert LesionMaskd("label", allow_missing_keys=True)({"image": 1}) == {"image": 1}
    for bad in (math.nan, "127", None, True):
        with pytest.raises(ValueError, match="threshold"):
            LesionMaskd("label", threshold=bad)


def test_lesion_mask_warns_when_a_0_1_mask_would_become_empty():
    with pytest.warns(UserWarning, match="threshold=0"):
        out = lesion_mask(np.array([[0, 1], [1, 0]], np.uint8))
    assert not out.any()


def test_bundle_loads_the_stored_uint8_and_scales_to_the_same_float32(pair):
    """train.json's LoadImaged keeps the stored dtype (``"dtype": null``: a float32 copy of every
    file was a wasted pass, ScaleIntensityd and LesionMaskd convert anyway). The chain's output
    is that of MONAI's default (float32 loading) bit for bit, and the numpy reference's."""
    from pathlib import Path

    parser = ConfigParser()
    parser.read_config(str(Path(__file__).parents[2] / "bundle" / "configs" / "train.json"))
    parser["intensity"] = "slice"  # the numpy reference is the tutorial's min-max (tutorial.json)
    assert parser["deterministic_transforms"][0]["dtype"] is None
    resize = next(
        t for t in parser["deterministic_transforms"] if t["_target_"] == "Resized" and "image" in t["keys"]
    )
    resize["spatial_size"] = [H, W]  # no resizing: the numpy reference is at the stored size
    stored = parser.get_parsed_content("deterministic_transforms", lazy=False)
    parser["deterministic_transforms"][0]["dtype"] = "$numpy.float32"
    parser["imports"] = [*parser["imports"], "$import numpy"]
    as_float = parser.get_parsed_content("deterministic_transforms", lazy=False)
    assert stored[0](dict(pair))["image"].dtype == torch.uint8
    a, b = dict(pair), dict(pair)
    for first, second in zip(stored, as_float):
        a, b = first(a), second(b)
    expected_image, expected_label = _expected(pair)
    for key in ("image", "label"):
        assert a[key].dtype == torch.float32
        assert torch.equal(a[key], b[key])
    np.testing.assert_allclose(a["image"].numpy(), expected_image, atol=1e-6)
    np.testing.assert_array_equal(a["label"].numpy(), expected_label)
