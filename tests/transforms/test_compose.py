"""ComposeWithoutMeta: MONAI's own augmentation results, without metadata bookkeeping."""

from __future__ import annotations

import math

import pytest
import torch
from monai.data import MetaTensor, get_track_meta
from monai.transforms import Compose, MapTransform, RandFlipd, RandRotated, RandZoomd

from transforms import ComposeWithoutMeta

KEYS = ["image", "label"]


def _augmentations() -> list:
    return [
        RandZoomd(
            KEYS, prob=1.0, min_zoom=0.9, max_zoom=1.1, mode=["bilinear", "nearest-exact"], keep_size=True
        ),
        RandRotated(
            KEYS, prob=1.0, range_x=math.radians(15), mode=["bilinear", "nearest"], padding_mode="zeros"
        ),
        RandFlipd(KEYS, prob=0.5, spatial_axis=1),
    ]


def _sample(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    image = torch.rand(3, 48, 48, generator=g)
    label = torch.zeros(1, 48, 48)
    label[:, 10:30, 14:22] = 1.0
    return {"image": image, "label": label}


def test_same_outputs_as_a_plain_compose_with_the_same_seed():
    plain, fast = Compose(_augmentations()), ComposeWithoutMeta(_augmentations())
    plain.set_random_state(seed=7)
    fast.set_random_state(seed=7)
    for i in range(12):
        expected, got = plain(_sample(i)), fast(_sample(i))
        for key in KEYS:
            assert type(got[key]) is torch.Tensor  # no MetaTensor
            assert isinstance(expected[key], MetaTensor)
            torch.testing.assert_close(got[key], expected[key].as_tensor(), rtol=0, atol=0)
        # the draws really change the data: zoom+rotation moves the mask off its input position
        assert not torch.equal(got["label"], _sample(i)["label"])


class _Spy(MapTransform):
    seen: list[bool] = []

    def __call__(self, data):
        _Spy.seen.append(get_track_meta())
        return data


class _Boom(MapTransform):
    def __call__(self, data):
        raise RuntimeError("boom")


def test_tracking_is_off_inside_and_restored_after():
    assert get_track_meta()
    _Spy.seen = []
    ComposeWithoutMeta([_Spy(KEYS)])(_sample(0))
    assert _Spy.seen == [False]
    assert get_track_meta()
    with pytest.raises(RuntimeError):
        ComposeWithoutMeta([_Boom(KEYS)])(_sample(0))
    assert get_track_meta()  # restored after a failing transform too


def test_train_chain_caches_everything_and_the_loader_augments():
    """The training dataset's chain has no random transform, so CacheDataset caches all of it;
    the augmentations run in the DataLoader's collate_fn, as one BatchAugmentation."""
    from monai.bundle import ConfigParser
    from monai.transforms import Randomizable

    from tests.support import CONFIGS
    from transforms import BatchAugmentation

    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "train.json"))
    chain = parser.get_parsed_content("train#preprocessing")
    assert chain.get_index_of_first(lambda t: isinstance(t, Randomizable)) is None
    assert len(chain.transforms) == len(parser.get_parsed_content("deterministic_transforms"))
    assert parser["train#dataloader"]["collate_fn"].replace("::", "#") == "@train#augmentation"
    collate = parser.get_parsed_content("train#augmentation")
    assert isinstance(collate, BatchAugmentation)
    assert [type(t).__name__ for t in collate.augmentation.transforms] == [
        "RandZoomd",
        "RandRotated",
        "RandFlipd",
    ]
