"""train.json's ``intensity`` option switches the one preprocessing chain, for training and inference."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
import torch
from monai.bundle import ConfigParser

from pipeline.inference.preprocessing import (
    bounds_key,
    image_preprocessing,
    intensity_of,
)
from tests.support import CONFIGS
from transforms import ComposeWithoutMeta, ScaleIntensityByRecordd

H, W, SIZE = 64, 48, 32  # area resize 64x48 -> 32x32: rows by 2, columns by 1.5
BOUNDS = [[20.0, 180.0], [5.0, 240.0], [60.0, 90.0]]
# the chain of train.json before the option (commit 93fc34d), with image_size 32
TUTORIAL_CHAIN = [
    {
        "_target_": "LoadImaged",
        "keys": ["image", "label"],
        "reader": "$transforms.TiffReader()",
        "image_only": True,
        "dtype": None,
        "allow_missing_keys": True,
    },
    {"_target_": "EnsureChannelFirstd", "keys": ["image", "label"], "allow_missing_keys": True},
    {"_target_": "ScaleIntensityd", "keys": "image", "minv": 0.0, "maxv": 1.0},
    {"_target_": "transforms.LesionMaskd", "keys": "label", "allow_missing_keys": True},
    {
        "_target_": "Resized",
        "keys": ["image", "label"],
        "spatial_size": [SIZE, SIZE],
        "mode": ["area", "nearest-exact"],
        "allow_missing_keys": True,
    },
    {
        "_target_": "EnsureTyped",
        "keys": ["image", "label"],
        "dtype": "$torch.float32",
        "track_meta": False,
        "allow_missing_keys": True,
    },
]


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("slice") / "TCGA_CS_4941_19960909"
    folder.mkdir()
    rng = np.random.default_rng(5)
    image = rng.integers(0, 256, size=(H, W, 3), dtype=np.uint8)
    mask = np.zeros((H, W), np.uint8)
    mask[10:30, 5:20] = 255
    files = {
        "image": folder / "TCGA_CS_4941_19960909_3.tif",
        "label": folder / "TCGA_CS_4941_19960909_3_mask.tif",
    }
    tifffile.imwrite(files["image"], image, photometric="rgb", metadata=None)
    tifffile.imwrite(files["label"], mask, photometric="minisblack", metadata=None)
    return {k: str(v) for k, v in files.items()}


def _train_config(**overrides) -> dict:
    config = json.loads((CONFIGS / "train.json").read_text())
    config.update(image_size=SIZE, **overrides)
    return config


def _chain(config: dict) -> list:
    return ConfigParser(config).get_parsed_content("deterministic_transforms", lazy=False)


def _run(chain: list, record: dict) -> dict:
    data = dict(record)
    for transform in chain:
        data = transform(data)
    return data


def _area(x: np.ndarray) -> np.ndarray:
    """Area resize (C, 64, 48) -> (C, 32, 32) by hand, as torch's adaptive average pooling does it:
    output j averages inputs floor(j * n / m) .. ceil((j + 1) * n / m) - 1, each weighed alike;
    rows pair up, and columns 3j, 3j+1, 3j+2 give outputs 2j (3j, 3j+1) and 2j+1 (3j+1, 3j+2)."""
    rows = (x[:, 0::2] + x[:, 1::2]) / 2  # (C, 32, 48)
    out = np.empty((x.shape[0], SIZE, SIZE))
    for j in range(SIZE // 2):
        a, b, c = rows[..., 3 * j], rows[..., 3 * j + 1], rows[..., 3 * j + 2]
        out[..., 2 * j] = (a + b) / 2
        out[..., 2 * j + 1] = (b + c) / 2
    return out


def _clip_scale(x: np.ndarray, bounds) -> np.ndarray:
    lo = np.array([b[0] for b in bounds])[:, None, None]
    hi = np.array([b[1] for b in bounds])[:, None, None]
    return np.minimum(np.maximum((x - lo) / (hi - lo), 0.0), 1.0)


def test_slice_keeps_the_tutorials_chain_byte_for_byte(pair):
    chain = _chain(_train_config(intensity="slice"))  # the tutorial's option (tutorial.json)
    assert [type(t).__name__ for t in chain] == [
        "LoadImaged",
        "EnsureChannelFirstd",
        "ScaleIntensityd",
        "LesionMaskd",
        "Resized",
        "EnsureTyped",
    ]
    tutorial = ConfigParser({"imports": ["$import torch", "$import transforms"], "chain": TUTORIAL_CHAIN})
    expected = _run(tutorial.get_parsed_content("chain"), pair)
    got = _run(chain, pair)
    for key in ("image", "label"):
        assert got[key].dtype == expected[key].dtype == torch.float32
        assert torch.equal(got[key], expected[key])
    # and the tutorial's numbers: min-max over the slice, then the area resize
    stored = np.moveaxis(tifffile.imread(pair["image"]), -1, 0).astype(np.float64)
    by_hand = _area((stored - stored.min()) / (stored.max() - stored.min()))
    np.testing.assert_allclose(got["image"].numpy(), by_hand, rtol=0, atol=1e-5)


def test_volume_scales_each_channel_by_the_records_bounds(pair):
    chain = _chain(_train_config(intensity="volume"))
    assert [type(t).__name__ for t in chain] == [
        "LoadImaged",
        "EnsureChannelFirstd",
        "LesionMaskd",
        "Resized",
        "ScaleIntensityByRecordd",
        "EnsureTyped",
    ]
    got = _run(chain, dict(pair, intensity=BOUNDS))
    stored = np.moveaxis(tifffile.imread(pair["image"]), -1, 0).astype(np.float64)
    by_hand = _clip_scale(_area(stored), BOUNDS)
    assert got["image"].dtype == torch.float32 and tuple(got["image"].shape) == (3, SIZE, SIZE)
    np.testing.assert_allclose(got["image"].numpy(), by_hand, rtol=0, atol=1e-5)
    slice_chain = _run(_chain(_train_config(intensity="slice")), pair)
    assert torch.equal(got["label"], slice_chain["label"])  # the mask is untouched by the option
    # the bounds decide: other bounds, other numbers
    other = _run(chain, dict(pair, intensity=[[0.0, 255.0]] * 3))["image"].numpy()
    np.testing.assert_allclose(other, _area(stored) / 255.0, rtol=0, atol=1e-5)


def test_volume_without_bounds_says_what_is_missing(pair):
    chain = _chain(_train_config(intensity="volume"))
    with pytest.raises(Exception) as raised:
        _run(chain, pair)
    causes = [raised.value, raised.value.__cause__, raised.value.__context__]
    assert any(isinstance(e, KeyError) and "'intensity'" in str(e) for e in causes)


@pytest.mark.parametrize("bad", ["Volume", "per-patient", 3])
def test_bad_option_names_the_key_and_the_values(bad):
    from pipeline.errors import our_error

    with pytest.raises(Exception) as raised:
        _chain(_train_config(intensity=bad))
    ours = our_error(raised.value)
    assert isinstance(ours, ValueError)
    assert "intensity must be 'slice'" in str(ours) and "'volume'" in str(ours) and repr(bad) in str(ours)
    for build in (
        lambda: image_preprocessing(SIZE, _train_config(intensity=bad)),
        lambda: intensity_of(_train_config(intensity=bad)),
    ):
        with pytest.raises(ValueError, match="intensity must be 'slice' .* or 'volume'"):
            build()


def test_inference_chains_follow_the_option(pair):
    """image_preprocessing (inference.json, run_inference) and the volume-slice path of
    SliceDataset (the chain minus its loading steps, on an array) give the training numbers."""
    for option, record in (("slice", {}), ("volume", {"intensity": BOUNDS})):
        config = _train_config(intensity=option)
        training = _run(_chain(config), dict(pair, **record))["image"]
        chain = image_preprocessing(SIZE, config)
        assert bounds_key(chain) == (None if option == "slice" else "intensity")
        assert intensity_of(config) == option
        from_file = chain({"image": pair["image"], **record})["image"]
        raw = np.moveaxis(tifffile.imread(pair["image"]), -1, 0).astype(np.float32)
        from_array = ComposeWithoutMeta(list(chain.transforms[2:]))({"image": raw, **record})["image"]
        for result in (from_file, from_array):
            assert type(result) is torch.Tensor and result.dtype == torch.float32
            torch.testing.assert_close(result, training, rtol=0, atol=1e-6)
    assert intensity_of({"deterministic_transforms": TUTORIAL_CHAIN}) == "slice"  # configs before the option
    assert bounds_key(ScaleIntensityByRecordd("image", bounds_key="w")) == "w"


def test_train_json_reads_the_option_in_one_place():
    """The option is one key; the chain holds both transforms, each enabled by it, and MLflow logs it."""
    config = json.loads((CONFIGS / "train.json").read_text())
    assert config["intensity"] == "volume"  # the default since the hard phantom's three seeds
    assert config["data"]["intensity"] == "@intensity"
    assert config["mlflow_tracking"]["experiment_param"]["intensity"] == "@intensity"
    flags = {t["_target_"]: t.get("_disabled_") for t in config["deterministic_transforms"]}
    assert flags["ScaleIntensityd"] == "$transforms.intensity_option(@intensity) != 'slice'"
    assert (
        flags["transforms.ScaleIntensityByRecordd"] == "$transforms.intensity_option(@intensity) != 'volume'"
    )
    demo = json.loads((CONFIGS / "demo.json").read_text())
    assert "intensity" not in demo  # the demo follows train.json's default
