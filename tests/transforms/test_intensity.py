"""transforms.intensity: per-channel clipping to record bounds and scaling to [0, 1], against numpy."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from transforms import ScaleIntensityByRecordd, intensity_option, scale_by_bounds

BOUNDS = [[30.0, 200.0], [0.0, 255.0], [100.5, 101.5]]  # clips at both ends; a narrow window


def _stored(seed: int = 0, shape=(3, 20, 24)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)


def _by_hand(x: np.ndarray, bounds) -> np.ndarray:
    """Per channel, per pixel: (v - lo) / (hi - lo), then 0 below and 1 above, in float64."""
    out = np.empty(x.shape, np.float64)
    for c, (lo, hi) in enumerate(bounds):
        for index, v in np.ndenumerate(x[c]):
            t = (float(v) - lo) / (hi - lo) if hi > lo else 0.0
            out[(c, *index)] = 0.0 if t < 0 else 1.0 if t > 1 else t
    return out


def test_numpy_torch_and_metatensor_match_the_hand_computation():
    stored = _stored()
    expected = _by_hand(stored, BOUNDS)
    assert (expected == 0).any() and (expected == 1).any() and ((expected > 0) & (expected < 1)).any()
    out = scale_by_bounds(stored, BOUNDS)
    assert isinstance(out, np.ndarray) and out.dtype == np.float32 and out.shape == stored.shape
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-6)
    out = scale_by_bounds(torch.from_numpy(stored), BOUNDS)
    assert type(out) is torch.Tensor and out.dtype == torch.float32
    np.testing.assert_allclose(out.numpy(), expected, rtol=0, atol=1e-6)
    meta = MetaTensor(torch.from_numpy(stored), meta={"filename_or_obj": "p_3.tif"})
    out = scale_by_bounds(meta, BOUNDS)
    assert isinstance(out, MetaTensor) and out.meta["filename_or_obj"] == "p_3.tif"
    np.testing.assert_allclose(out.numpy(), expected, rtol=0, atol=1e-6)
    # float input (a volume read as float32) gives the same numbers
    np.testing.assert_allclose(
        scale_by_bounds(stored.astype(np.float32), BOUNDS), expected, rtol=0, atol=1e-6
    )


def test_channels_are_scaled_by_their_own_bounds_not_together():
    x = np.stack(
        [np.full((2, 2), 50, np.uint8), np.full((2, 2), 50, np.uint8), np.full((2, 2), 50, np.uint8)]
    )
    out = scale_by_bounds(x, [[0, 100], [50, 150], [0, 50]])
    assert out[:, 0, 0].tolist() == [0.5, 0.0, 1.0]


def test_a_flat_channel_becomes_zero():
    x = _stored(1, (3, 4, 5))
    out = scale_by_bounds(x, [[7.0, 7.0], [0.0, 255.0], [0.0, 255.0]])
    assert not out[0].any()
    np.testing.assert_allclose(out[1:], x[1:] / 255.0, rtol=0, atol=1e-6)


def test_dictionary_transform_reads_the_bounds_and_keeps_the_record():
    stored = _stored(2)
    record = {"image": torch.from_numpy(stored), "intensity": BOUNDS, "patient": "P", "label": "untouched"}
    out = ScaleIntensityByRecordd("image")(record)
    np.testing.assert_allclose(out["image"].numpy(), _by_hand(stored, BOUNDS), rtol=0, atol=1e-6)
    assert out["intensity"] is BOUNDS and out["patient"] == "P" and out["label"] == "untouched"
    assert record["image"].dtype == torch.uint8  # the input record is not changed
    other = ScaleIntensityByRecordd("image", bounds_key="window")({"image": stored, "window": BOUNDS})
    np.testing.assert_allclose(other["image"], _by_hand(stored, BOUNDS), rtol=0, atol=1e-6)


def test_missing_bounds_name_the_key_and_the_fix():
    with pytest.raises(KeyError, match="'intensity'.*volume_bounds"):
        ScaleIntensityByRecordd("image")({"image": _stored()})
    # a record without the image (allowed) needs no bounds
    assert ScaleIntensityByRecordd("image", allow_missing_keys=True)({"label": 1}) == {"label": 1}


@pytest.mark.parametrize(
    ("bounds", "message"),
    [
        ([[0, 1], [0, 1]], "2 \\[lo, hi\\] pairs for an image of 3 channels"),
        ([[0, 1], [0, 1], [5, 4]], "channel 2 must be finite with lo <= hi"),
        ([[0, 1], [0, math.nan], [0, 1]], "channel 1 must be finite"),
        ([0.0, 1.0, 2.0], "one \\[lo, hi\\] pair per channel"),
    ],
)
def test_bad_bounds_are_refused(bounds, message):
    with pytest.raises(ValueError, match=message):
        scale_by_bounds(_stored(), bounds)


def test_intensity_option_values():
    assert intensity_option("slice") == "slice" and intensity_option("volume") == "volume"
    for bad in ("Volume", "patient", "", None, 1, True):
        with pytest.raises(ValueError, match="intensity must be 'slice' .* or 'volume' .*--intensity"):
            intensity_option(bad)
