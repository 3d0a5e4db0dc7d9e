"""BatchAugmentation (train.json's collate_fn) against MONAI's transforms applied item by item."""

from __future__ import annotations

import math

import pytest
import torch
from ignite.engine import Engine
from monai.data import DataLoader, list_data_collate
from monai.transforms import RandFlipd, RandGaussianNoised, RandRotated, RandZoomd

from pipeline.training.resume import EpochSeeding
from transforms import BatchAugmentation, ComposeWithoutMeta, FusedAugmentation

KEYS = ["image", "label"]


def _zoom(prob=0.5, lo=0.85, hi=1.15, padding="edge"):
    return RandZoomd(
        KEYS, prob=prob, min_zoom=lo, max_zoom=hi, mode=["bilinear", "nearest-exact"], padding_mode=padding
    )


def _rotate(prob=0.5, degrees=30.0, padding="zeros"):
    return RandRotated(
        KEYS, prob=prob, range_x=math.radians(degrees), mode=["bilinear", "nearest"], padding_mode=padding
    )


def _flip(prob=0.5, axis=1):
    return RandFlipd(KEYS, prob=prob, spatial_axis=axis)


def _items(n: int, shape=(31, 37), seed=0) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    return [
        {
            "image": torch.rand(3, *shape, generator=g),
            "label": (torch.rand(1, *shape, generator=g) > 0.6).float(),
            "patient": f"P{i}",
            "slice": i,
        }
        for i in range(n)
    ]


def _monai_item_by_item(make, items, seed):
    chain = ComposeWithoutMeta(make())
    chain.set_random_state(seed=seed)
    return [chain(dict(item)) for item in items]


@pytest.mark.parametrize(
    "make",
    [
        lambda: [_zoom(padding="edge")],
        lambda: [_zoom(padding="constant")],
        lambda: [_rotate(padding="zeros")],
        lambda: [_rotate(padding="border")],
        lambda: [_flip(axis=1)],
        lambda: [_flip(axis=0)],
    ],
    ids=["zoom-edge", "zoom-constant", "rotate-zeros", "rotate-border", "flip-w", "flip-h"],
)
def test_each_transform_matches_monai_item_by_item(make):
    """Probability 0.5: in one batch some items fire and some do not (those get the identity).
    Odd sizes keep nearest rounding off ties, so masks must agree exactly (see test_fused)."""
    items = _items(12)
    expected = _monai_item_by_item(make, items, seed=5)
    collate = BatchAugmentation(make())
    collate.set_random_state(seed=5)
    batch = collate(items)
    fired = [not torch.equal(e["image"], i["image"]) for e, i in zip(expected, items)]
    assert any(fired) and not all(fired), "the seed was chosen so that some items fire, not all"
    for key in KEYS:
        want = torch.stack([torch.as_tensor(e[key]).float() for e in expected])
        assert batch[key].shape == want.shape
    torch.testing.assert_close(batch["image"], torch.stack([e["image"] for e in expected]), rtol=0, atol=2e-5)
    assert torch.equal(batch["label"], torch.stack([e["label"].float() for e in expected]))


def test_the_bundle_chain_matches_fused_item_by_item():
    """Same draws as FusedAugmentation item by item; coordinates computed once for the batch
    round differently in the last float bit at most, so images agree to 1e-4 and masks on all
    but a handful of pixels."""

    def make():
        return [_zoom(prob=0.7, lo=0.9, hi=1.1), _rotate(prob=0.7, degrees=15.0), _flip(prob=0.5)]

    items = _items(8, shape=(64, 64), seed=1)
    fused = FusedAugmentation(make())
    fused.set_random_state(seed=2)
    expected = [fused(dict(item)) for item in items]
    collate = BatchAugmentation(make())
    collate.set_random_state(seed=2)
    batch = collate(items)
    torch.testing.assert_close(batch["image"], torch.stack([e["image"] for e in expected]), rtol=0, atol=1e-4)
    differing = int((batch["label"] != torch.stack([e["label"] for e in expected])).sum())
    assert differing <= 8, differing
    assert batch["image"].dtype == batch["label"].dtype == torch.float32


def test_other_keys_are_collated_and_items_left_untouched():
    items = _items(4)
    before = [{k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in i.items()} for i in items]
    batch = BatchAugmentation([_zoom(prob=1.0), _rotate(prob=1.0), _flip(prob=1.0)])(items)
    assert batch["patient"] == ["P0", "P1", "P2", "P3"]
    assert torch.equal(torch.as_tensor(batch["slice"]), torch.arange(4))
    assert batch["image"].shape == (4, 3, 31, 37) and batch["label"].shape == (4, 1, 31, 37)
    for item, old in zip(items, before):  # the CacheDataset hands out its cached items (no copy)
        assert all(torch.equal(item[k], old[k]) for k in KEYS)


def test_unfusable_augmentations_fall_back_to_fused_item_by_item():
    """A transform the fused path does not cover: each item through FusedAugmentation (which
    runs MONAI one by one where needed), then list_data_collate; the same as doing that by hand."""

    def make():
        return [_zoom(prob=1.0), RandGaussianNoised("image", prob=1.0, std=0.1), _flip(prob=1.0)]

    items = _items(3)
    fused = FusedAugmentation(make())
    fused.set_random_state(seed=9)
    expected = list_data_collate([fused(dict(item)) for item in items])
    collate = BatchAugmentation(make())
    collate.set_random_state(seed=9)
    got = collate(items)
    for key in KEYS:
        assert torch.equal(torch.as_tensor(got[key]), torch.as_tensor(expected[key]))


def test_items_of_different_sizes_fall_back():
    """Items that cannot share one batch tensor: the fallback path collates them and
    list_data_collate names the mismatch, as it would without augmentation."""
    items = _items(1, shape=(31, 37)) + _items(1, shape=(33, 37))
    with pytest.raises(RuntimeError, match="stack expects each tensor to be equal size|collate"):
        BatchAugmentation([_flip(prob=1.0)])(items)


def _loader_batches(num_workers: int) -> list[torch.Tensor]:
    item = _items(1, shape=(32, 32))[0]
    torch.manual_seed(0)
    loader = DataLoader(
        [item] * 8,
        batch_size=2,
        num_workers=num_workers,
        collate_fn=BatchAugmentation([_zoom(prob=1.0), _rotate(prob=1.0)]),
    )
    return [batch["image"] for batch in loader]


def test_worker_processes_draw_differently_and_repeat():
    """Two workers start from copies of one random state; without the reseeding from the
    worker's seed they would augment batches 0 and 1 identically (all items are the same)."""
    first, again = _loader_batches(2), _loader_batches(2)
    assert not torch.equal(first[0], first[1])
    assert all(torch.equal(a, b) for a, b in zip(first, again))


def test_epoch_seeding_reseeds_the_loaders_collate_fn():
    """EpochSeeding finds the augmentation on the engine's DataLoader: epoch k's batches depend
    on (seed, k) only, whatever ran before (what an exact resume needs)."""
    item = _items(1, shape=(32, 32))[0]
    engine = Engine(lambda e, b: None)
    engine.data_loader = DataLoader(
        [item] * 4, batch_size=2, collate_fn=BatchAugmentation([_rotate(prob=1.0)])
    )
    seeding = EpochSeeding(seed=7)

    def epoch(k: int) -> list[torch.Tensor]:
        engine.state.epoch = k
        seeding(engine)
        return [b["image"] for b in engine.data_loader]

    third = epoch(3)
    epoch(4)
    assert not torch.equal(third[0], epoch(4)[0])
    assert all(torch.equal(a, b) for a, b in zip(third, epoch(3)))
