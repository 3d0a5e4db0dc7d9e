"""train.json's ``fast_augmentation`` switch: the fused batch resampling or MONAI's plain transforms.

``--fast_augmentation false`` is the one override that trains on MONAI's own Compose of the
``augmentations``, item by item, collated by ``list_data_collate``: checked here on
``BatchAugmentation(fused=False)`` against MONAI directly, and on the training DataLoader that
MONAI's ConfigParser builds from train.json with either value.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser
from monai.data import MetaTensor, list_data_collate
from monai.transforms import Compose, RandFlipd, RandRotated, RandZoomd

from transforms import BatchAugmentation, FusedAugmentation

TRAIN_JSON = Path(__file__).resolve().parents[2] / "bundle" / "configs" / "train.json"
KEYS = ["image", "label"]
SIZE = 64


def _augmentations() -> list:
    return [
        RandZoomd(KEYS, prob=1.0, min_zoom=0.9, max_zoom=1.1, mode=["bilinear", "nearest-exact"]),
        RandRotated(
            KEYS, prob=1.0, range_x=math.radians(15), mode=["bilinear", "nearest"], padding_mode="zeros"
        ),
        RandFlipd(KEYS, prob=0.5, spatial_axis=1),
    ]


def _items(n: int) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    return [
        {
            "image": torch.rand(3, 31, 37, generator=g),
            "label": (torch.rand(1, 31, 37, generator=g) > 0.6).float(),
            "patient": f"P{i}",
            "slice": i,
        }
        for i in range(n)
    ]


def test_unfused_is_monais_compose_item_by_item():
    """fused=False: exactly MONAI's Compose on each item (MetaTensors, same draws for a seed) and
    list_data_collate; reseeding works as on the fused path."""
    items = _items(5)
    expected_chain = Compose(_augmentations())
    expected_chain.set_random_state(seed=3)
    expected = list_data_collate([expected_chain(dict(item)) for item in items])
    collate = BatchAugmentation(_augmentations(), fused=False).set_random_state(seed=3)
    assert type(collate.augmentation) is Compose
    got = collate(items)
    for key in KEYS:
        assert isinstance(got[key], MetaTensor)
        assert torch.equal(got[key].as_tensor(), expected[key].as_tensor())
    assert got["patient"] == expected["patient"] and torch.equal(got["slice"], expected["slice"])


@pytest.mark.parametrize(("value", "fused"), [(True, True), (False, False), ("false", False), ("True", True)])
def test_the_switch_takes_the_bundle_clis_strings(value, fused):
    collate = BatchAugmentation(_augmentations(), fused=value)
    assert collate.fused is fused
    assert (type(collate.augmentation) is FusedAugmentation) is fused


def test_the_switch_refuses_other_strings():
    with pytest.raises(ValueError, match="fused must be true or false, not 'fast'"):
        BatchAugmentation(_augmentations(), fused="fast")


@pytest.fixture(scope="module")
def bundle_root(tmp_path_factory) -> str:
    """One bundle root for the module: the phantom dataset is generated once."""
    return str(tmp_path_factory.mktemp("switch"))


def _train_loader(bundle_root: str, **overrides):
    parser = ConfigParser()
    parser.read_config(str(TRAIN_JSON))
    settings = {"image_size": SIZE, "phantom_patients": 4, "num_workers": 0, "batch_size": 4}
    parser.update({"bundle_root": bundle_root, **settings, **overrides})
    return parser.get_parsed_content("train#dataloader")


@pytest.mark.parametrize("fast", [True, False, "false"])
def test_train_loader_with_either_value(bundle_root, fast):
    """The training DataLoader from train.json: (4, 3, 64, 64) images and (4, 1, 64, 64) 0/1 masks,
    augmented (zoom always fires, so no slice equals its cached version)."""
    loader = _train_loader(bundle_root, fast_augmentation=fast)
    collate = loader.collate_fn
    assert isinstance(collate, BatchAugmentation) and collate.fused is (fast is True)
    chain = collate.augmentation
    assert type(chain) is (FusedAugmentation if fast is True else Compose)
    assert [type(t) for t in chain.transforms] == [RandZoomd, RandRotated, RandFlipd]
    cached = {(item["patient"], int(item["slice"])): item for item in loader.dataset}
    for batch, _ in zip(loader, range(2)):
        image, label = torch.as_tensor(batch["image"]), torch.as_tensor(batch["label"])
        assert image.shape == (4, 3, SIZE, SIZE) and label.shape == (4, 1, SIZE, SIZE)
        assert image.dtype == torch.float32 and label.dtype == torch.float32
        assert set(label.unique().tolist()) <= {0.0, 1.0}
        assert isinstance(batch["image"], MetaTensor) is (fast is not True)
        for i, (patient, index) in enumerate(zip(batch["patient"], batch["slice"].tolist())):
            assert not torch.equal(image[i], torch.as_tensor(cached[(patient, index)]["image"]))
