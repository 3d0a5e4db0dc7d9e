"""FusedAugmentation against MONAI's own transforms run one by one (ComposeWithoutMeta)."""

from __future__ import annotations

import math

import pytest
import torch
from monai.transforms import (
    RandFlipd,
    RandGaussianNoised,
    RandRotated,
    RandZoomd,
)

from pipeline.training.runs import cached_dataset
from transforms import ComposeWithoutMeta, FusedAugmentation

KEYS = ["image", "label"]


def _zoom(lo=0.9, hi=1.1, padding="edge", **kw):
    return RandZoomd(
        KEYS,
        prob=1.0,
        min_zoom=lo,
        max_zoom=hi,
        mode=["bilinear", "nearest-exact"],
        padding_mode=padding,
        keep_size=True,
        **kw,
    )


def _rotate(degrees=15.0, padding="zeros", lo=None):
    low = math.radians(lo) if lo is not None else -math.radians(degrees)
    return RandRotated(
        KEYS,
        prob=1.0,
        range_x=(low, math.radians(degrees)),
        mode=["bilinear", "nearest"],
        padding_mode=padding,
    )


def _flip(axis=1, prob=1.0):
    return RandFlipd(KEYS, prob=prob, spatial_axis=axis)


def _bundle_augmentations():
    """train.json's list, with its default settings."""
    return [
        _zoom(0.95, 1.05),
        _rotate(15.0),
        _flip(1, prob=0.5),
    ]


def _random_sample(seed: int, shape=(32, 32)) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    image = torch.rand(3, *shape, generator=g)
    label = (torch.rand(1, *shape, generator=g) > 0.6).float()
    return {"image": image, "label": label}


def _smooth_sample(shape=(64, 64)) -> dict[str, torch.Tensor]:
    """A smooth image and a disk mask: what MRI slices and lesion masks look like, roughly."""
    y, x = torch.meshgrid(
        torch.arange(shape[0], dtype=torch.float32),
        torch.arange(shape[1], dtype=torch.float32),
        indexing="ij",
    )
    image = torch.stack(
        [torch.sin(x / 7) * torch.cos(y / 5), torch.exp(-((x - 30) ** 2 + (y - 25) ** 2) / 300), x / shape[1]]
    )
    label = (((x - 36) ** 2 + (y - 28) ** 2) < 12**2).float()[None]
    return {"image": image, "label": label}


def _pair(make, seed=0):
    """The same transforms twice, seeded alike: MONAI one by one, and fused."""
    monai_chain, fused = ComposeWithoutMeta(make()), FusedAugmentation(make())
    monai_chain.set_random_state(seed=seed)
    fused.set_random_state(seed=seed)
    return monai_chain, fused


@pytest.mark.parametrize("shape", [(31, 37), (33, 45)])
@pytest.mark.parametrize("padding", ["edge", "constant"])
@pytest.mark.parametrize("zoom_range", [(0.85, 0.95), (1.05, 1.2)])
def test_zoom_alone_matches_monai(shape, padding, zoom_range):
    """Odd sizes: interpolate's nearest index (d + 0.5) * n / m never lands on a .5 tie (2m does
    not divide (2d + 1) n), so the masks must agree pixel for pixel."""
    expected_chain, fused = _pair(lambda: [_zoom(*zoom_range, padding=padding)])
    for i in range(6):
        expected, got = expected_chain(_random_sample(i, shape)), fused(_random_sample(i, shape))
        torch.testing.assert_close(got["image"], expected["image"], rtol=0, atol=2e-5)
        assert torch.equal(got["label"], expected["label"].float())


def test_zoom_mask_differs_only_on_rounding_ties_at_even_sizes():
    """32 px zoomed by 0.9 -> 28 px: source index (d + 0.5) * 32 / 28 - 0.5 is exactly k + 0.5 for
    some d. Torch's nearest-exact and grid_sample's nearest may round such a tie differently; the
    mask may differ on those rows and columns and nowhere else."""
    n = 32
    expected_chain, fused = _pair(lambda: [_zoom(0.9, 0.9)])
    zoomed = math.floor(n * 0.9)
    offset = (n - zoomed) // 2  # MONAI pads symmetrically, the smaller half before
    ties = {
        d + offset
        for d in range(zoomed)
        if abs((d + 0.5) * n / zoomed - round((d + 0.5) * n / zoomed)) < 1e-6
    }
    assert ties, "the example was chosen to have ties"
    for i in range(4):
        expected, got = expected_chain(_random_sample(i)), fused(_random_sample(i))
        torch.testing.assert_close(got["image"], expected["image"], rtol=0, atol=2e-5)
        rows, cols = torch.nonzero(got["label"][0] != expected["label"][0], as_tuple=True)
        assert all(int(r) in ties or int(c) in ties for r, c in zip(rows, cols))


@pytest.mark.parametrize("padding", ["zeros", "border"])
@pytest.mark.parametrize("shape", [(32, 32), (31, 37)])
def test_rotation_alone_matches_monai(padding, shape):
    expected_chain, fused = _pair(lambda: [_rotate(40.0, padding=padding)])
    for i in range(6):
        expected, got = expected_chain(_random_sample(i, shape)), fused(_random_sample(i, shape))
        torch.testing.assert_close(got["image"], expected["image"], rtol=0, atol=2e-5)
        assert torch.equal(got["label"], expected["label"].float())


@pytest.mark.parametrize("axis", [0, 1, None])
def test_flip_alone_is_exact(axis):
    expected_chain, fused = _pair(lambda: [_flip(axis)])
    sample = _random_sample(3, (31, 37))
    expected, got = expected_chain(sample), fused(sample)
    for key in KEYS:
        assert torch.equal(got[key], expected[key])
    dims = [1, 2] if axis is None else [axis + 1]
    assert torch.equal(got["image"], torch.flip(sample["image"], dims))  # by hand, not by MONAI


def test_a_quarter_turn_is_numpys_rot90():
    """A 90 degree rotation of a square slice moves whole pixels: an independent check of the
    rotation's direction and centre. MONAI's rotation by +90 degrees is rot90 with k=-1 on (H, W)."""
    sample = _random_sample(5, (17, 17))
    fused = FusedAugmentation([_rotate(90.0, lo=90.0)])
    monai_chain = ComposeWithoutMeta([_rotate(90.0, lo=90.0)])
    got, expected = fused(sample), monai_chain(sample)
    by_hand = torch.rot90(sample["image"], k=-1, dims=(1, 2))
    torch.testing.assert_close(got["image"], by_hand, rtol=0, atol=1e-5)
    torch.testing.assert_close(expected["image"], by_hand, rtol=0, atol=1e-5)
    assert torch.equal(got["label"], torch.rot90(sample["label"], k=-1, dims=(1, 2)))


def test_draws_are_monais_draws():
    """Same seed, same parameters: the fused transform draws through MONAI's randomize methods,
    so a seed (and EpochSeeding's reseeding on resume) means what it means for MONAI."""
    expected_chain, fused = _pair(_bundle_augmentations, seed=11)
    for i in range(25):
        expected_chain(_random_sample(i))
        fused(_random_sample(i))
        zoom_a, rot_a, flip_a = expected_chain.transforms[:3]
        zoom_b, rot_b, flip_b = fused.transforms[:3]
        assert zoom_a.rand_zoom._zoom == pytest.approx(zoom_b.rand_zoom._zoom)
        assert rot_a.rand_rotate.x == rot_b.rand_rotate.x
        assert flip_a._do_transform == flip_b._do_transform
    # and the generators are in the same state afterwards
    assert expected_chain.transforms[0].R.rand() == fused.transforms[0].R.rand()


def test_bundle_chain_is_close_to_monais_chain():
    """Zoom, rotation and flip resample once instead of twice: images differ by less than the
    second interpolation's smoothing, masks only on a few boundary pixels (rounded once)."""
    expected_chain, fused = _pair(_bundle_augmentations, seed=2)
    sample = _smooth_sample()
    boundary = _boundary(sample["label"][0])
    changed = 0
    for _ in range(20):
        expected, got = expected_chain(dict(sample)), fused(dict(sample))
        assert got["image"].dtype == torch.float32 and got["label"].dtype == torch.float32
        assert type(got["image"]) is torch.Tensor
        inner = (slice(None), slice(4, -4), slice(4, -4))  # away from the zero-padded corners
        diff = (got["image"] - expected["image"])[inner].abs().max()
        assert diff < 2e-2, diff
        mismatch = got["label"] != expected["label"]
        assert mismatch.float().mean() < 0.01
        # a mismatching pixel lies within 2 px of the (transformed) mask boundary in MONAI's output
        near = torch.nn.functional.max_pool2d(_boundary(expected["label"][0])[None].float(), 5, 1, 2)[0]
        assert bool((near[mismatch[0]] > 0).all())
        assert set(got["label"].unique().tolist()) <= {0.0, 1.0}
        changed += int(not torch.equal(got["label"], sample["label"]))
    assert boundary.any() and changed >= 15  # the draws moved the mask


def _boundary(mask: torch.Tensor) -> torch.Tensor:
    """Pixels whose 3x3 neighbourhood holds both values."""
    m = mask[None, None].float()
    hi = torch.nn.functional.max_pool2d(m, 3, 1, 1)
    lo = -torch.nn.functional.max_pool2d(-m, 3, 1, 1)
    return (hi != lo)[0, 0]


def _unsupported(kind: str):
    if kind == "reflection":
        return [_zoom(), _rotate(padding="reflection"), _flip()]
    if kind == "bicubic":
        return [RandZoomd(KEYS, prob=1.0, min_zoom=0.9, max_zoom=1.1, mode=["bicubic", "nearest-exact"])]
    if kind == "keep_size":
        return [RandZoomd(KEYS, prob=1.0, min_zoom=0.8, max_zoom=0.9, keep_size=False)]
    if kind == "mixed_modes":  # the label linear in one transform, nearest in the next
        return [
            RandZoomd(KEYS, prob=1.0, min_zoom=0.9, max_zoom=1.1, mode="bilinear"),
            _rotate(),
        ]
    return [_zoom(), RandGaussianNoised("image", prob=1.0), _rotate(), _flip()]


@pytest.mark.parametrize("kind", ["bicubic", "keep_size", "mixed_modes"])
def test_unsupported_settings_run_monai_one_by_one(kind):
    """Anything the fused path does not reproduce gives exactly MONAI's result."""
    expected_chain, fused = _pair(lambda: _unsupported(kind), seed=4)
    for i in range(4):
        expected, got = expected_chain(_random_sample(i)), fused(_random_sample(i))
        for key in KEYS:
            assert torch.equal(torch.as_tensor(got[key]), torch.as_tensor(expected[key]))


@pytest.mark.parametrize("kind", ["reflection", "noise_between"])
def test_an_unsupported_transform_splits_the_fused_runs(kind):
    """A transform the fused path does not handle runs by itself, in its place in the list;
    the runs of zoom/rotation/flip before and after it are fused separately. Odd sizes: no
    rounding ties, so the result is MONAI's up to float rounding."""
    expected_chain, fused = _pair(lambda: _unsupported(kind), seed=4)
    assert len(fused._steps) == 3
    for i in range(4):
        sample = _random_sample(i, (31, 37))
        expected, got = expected_chain(dict(sample)), fused(dict(sample))
        torch.testing.assert_close(got["image"], expected["image"].float(), rtol=0, atol=1e-4)
        assert torch.equal(got["label"], expected["label"].float())


def test_numpy_input_falls_back():
    expected_chain, fused = _pair(lambda: [_zoom(), _rotate()], seed=1)
    sample = {k: v.numpy() for k, v in _random_sample(0).items()}
    expected, got = expected_chain(dict(sample)), fused(dict(sample))
    for key in KEYS:
        assert torch.equal(torch.as_tensor(got[key]), torch.as_tensor(expected[key]))


def test_seeded_runs_repeat_and_seeds_differ():
    a, b, c = (FusedAugmentation(_bundle_augmentations()) for _ in range(3))
    a.set_random_state(seed=3)
    b.set_random_state(seed=3)
    c.set_random_state(seed=4)
    sample = _random_sample(0)
    outs = [t(dict(sample)) for t in (a, b, c)]
    assert torch.equal(outs[0]["image"], outs[1]["image"])
    assert not torch.equal(outs[0]["image"], outs[2]["image"])


def test_input_is_not_modified_so_the_cache_needs_no_copy():
    """train.json builds its CacheDataset with copy_cache=False: the augmentation must leave the
    cached tensors as they were."""
    data = [_random_sample(i) for i in range(3)]
    before = [{k: v.clone() for k, v in d.items()} for d in data]
    dataset = cached_dataset(
        data, FusedAugmentation(_bundle_augmentations()), num_workers=1, copy_cache=False
    )
    for _ in range(3):
        for i in range(len(dataset)):
            item = dataset[i]
            assert not torch.equal(item["image"], before[i]["image"])  # augmented
    cached = dataset._cache
    for got, expected in zip(cached, before):
        for key in KEYS:
            assert torch.equal(got[key], expected[key])


def test_the_bundles_augmentation_fuses_zoom_rotation_and_flip():
    """train.json's settings stay within what the fused path reproduces (a change of mode or
    padding there would silently fall back to MONAI one by one, at 5x the cost)."""
    from pathlib import Path

    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(Path(__file__).parents[2] / "bundle" / "configs" / "train.json"))
    augmentation = parser.get_parsed_content("train#augmentation").augmentation  # BatchAugmentation's
    assert type(augmentation) is FusedAugmentation
    fused, group = augmentation._steps[0]
    assert fused and [type(t) for t in group] == [RandZoomd, RandRotated, RandFlipd]
    assert len(augmentation._steps) == 1
    assert parser["train#dataset"]["copy_cache"] is False  # safe: test_input_is_not_modified...
