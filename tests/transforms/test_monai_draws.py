"""transforms.monai_draws, the one reader of MONAI internals, checked against MONAI's own output.

Each ``draw_*`` runs on one of two identically seeded copies of a MONAI transform; MONAI runs the
other on the same slice. The drawn parameters, fed to MONAI's deterministic Zoom, Rotate and Flip,
must give MONAI's result exactly (None: MONAI left the slice as it was), and both copies' generators
must end in the same state. The settings readers are checked by what MONAI does with the settings.
"""

from __future__ import annotations

import math

import pytest
import torch
from monai.transforms import Flip, RandFlipd, RandRotated, RandZoomd, Rotate, Zoom

from transforms import monai_draws

KEYS = ["image", "label"]


def _slice(seed: int, shape=(24, 30)) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "image": torch.rand(3, *shape, generator=g),
        "label": (torch.rand(1, *shape, generator=g) > 0.5).float(),
    }


def _twins(make, seed: int = 5):
    a, b = make(), make()
    a.set_random_state(seed=seed)
    b.set_random_state(seed=seed)
    return a, b


def _assert_same(got: dict, expected: dict) -> None:
    for key in KEYS:
        assert torch.equal(torch.as_tensor(got[key]), torch.as_tensor(expected[key])), key


def test_draw_zoom_is_what_randzoomd_applies():
    modes = ["bilinear", "nearest-exact"]
    monai, drawn = _twins(lambda: RandZoomd(KEYS, prob=0.5, min_zoom=0.8, max_zoom=1.2, mode=modes))
    fired = 0
    for i in range(12):
        sample = _slice(i)
        expected = monai(dict(sample))
        factors = monai_draws.draw_zoom(drawn, sample, "image")
        if factors is None:
            _assert_same(sample, expected)
            continue
        fired += 1
        assert len(factors) == 2 and all(0.8 <= f <= 1.2 for f in factors)
        got = {k: Zoom(zoom=factors, mode=m, keep_size=True)(sample[k]) for k, m in zip(KEYS, modes)}
        _assert_same(got, expected)
    assert 0 < fired < 12
    assert monai.R.rand() == drawn.R.rand() and monai.rand_zoom.R.rand() == drawn.rand_zoom.R.rand()


def test_draw_rotate_is_what_randrotated_applies():
    modes = ["bilinear", "nearest"]

    def make():
        return RandRotated(KEYS, prob=0.5, range_x=math.radians(30), mode=modes, padding_mode="zeros")

    monai, drawn = _twins(make)
    fired = 0
    for i in range(12):
        sample = _slice(i)
        expected = monai(dict(sample))
        angle = monai_draws.draw_rotate(drawn)
        if angle is None:
            _assert_same(sample, expected)
            continue
        fired += 1
        assert abs(angle) <= math.radians(30)
        got = {k: Rotate(angle, mode=m, padding_mode="zeros")(sample[k]) for k, m in zip(KEYS, modes)}
        _assert_same(got, expected)
    assert 0 < fired < 12
    assert monai.R.rand() == drawn.R.rand() and monai.rand_rotate.R.rand() == drawn.rand_rotate.R.rand()


@pytest.mark.parametrize("axis", [1, 0, -1, None, [0, 1]])
def test_draw_flip_is_what_randflipd_applies(axis):
    monai, drawn = _twins(lambda: RandFlipd(KEYS, prob=0.5, spatial_axis=axis))
    fired = 0
    for i in range(10):
        sample = _slice(i)
        expected = monai(dict(sample))
        axes = monai_draws.draw_flip(drawn)
        if axes is None:
            _assert_same(sample, expected)
            continue
        fired += 1
        assert axes == monai_draws.flip_axes(drawn) and set(axes) <= {0, 1}
        _assert_same({k: Flip(spatial_axis=axes)(sample[k]) for k in KEYS}, expected)
    assert 0 < fired < 10
    assert monai.R.rand() == drawn.R.rand()


def test_settings_are_what_monai_does_with_them():
    sample = {"image": torch.ones(1, 20, 20)}
    for keep in (True, False):
        zoom = RandZoomd(["image"], prob=1.0, min_zoom=0.8, max_zoom=0.8, keep_size=keep)
        rotate = RandRotated(["image"], prob=1.0, range_x=0.5, keep_size=keep)
        assert monai_draws.zoom_keeps_size(zoom) is keep
        assert monai_draws.rotate_keeps_size(rotate) is keep
        assert (zoom(dict(sample))["image"].shape == (1, 20, 20)) is keep
        assert (rotate(dict(sample))["image"].shape == (1, 20, 20)) is keep
    plain = RandZoomd(["image"], prob=1.0, min_zoom=0.8, max_zoom=0.8, padding_mode="constant")
    valued = RandZoomd(["image"], prob=1.0, min_zoom=0.8, max_zoom=0.8, padding_mode="constant", value=0.5)
    assert monai_draws.zoom_pad_options(plain) == {}
    assert monai_draws.zoom_pad_options(valued) == {"value": 0.5}
    assert float(plain(dict(sample))["image"][0, 0, 0]) == 0.0
    assert float(valued(dict(sample))["image"][0, 0, 0]) == 0.5
