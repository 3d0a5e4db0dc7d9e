"""``FusedAugmentation``: MONAI's RandZoomd, RandRotated and RandFlipd applied as one resampling.

Run one after the other, MONAI's 2D zoom and rotation each build a grid and interpolate the whole
slice, per key, with a MetaTensor's bookkeeping around every step: 2.5 ms per 3x128x128 slice and
mask on one core even without the metadata (``ComposeWithoutMeta``), against about 70 ms for the
demo network's whole training step on 4 slices. On a 2-core CPU that work competes with the
step. This transform takes the same MONAI transform objects (the bundle's ``augmentations``
list), draws their random parameters through their own ``randomize`` methods (so the draws, seeds
and resumes are MONAI's), composes the geometry of a run of consecutive zoom, rotation and flip
into one map from output to input pixel, and samples each key once.

What is kept exactly, per transform, in pixel-index space:

- RandZoomd (``keep_size=True``): ``torch.nn.functional.interpolate`` to ``floor(n * zoom)``
  pixels with ``align_corners=False`` (source index ``(d + 0.5) * n / m - 0.5``, clamped to the
  slice), then MONAI's centre crop (start ``m // 2 - n // 2``) or symmetric pad (before
  ``(n - m) // 2``) back to ``n``; ``padding_mode`` "edge" repeats the border, "constant" pads
  zeros. Modes "bilinear" and "nearest-exact".
- RandRotated (``keep_size=True``): rotation by the drawn angle about the slice centre
  ``(n - 1) / 2`` (source = R(angle) @ output, (H, W) order, as MONAI's ``create_rotate``),
  ``padding_mode`` "zeros" (bilinear fades to zero over the outer pixel, as ``grid_sample``
  does) or "border". Modes "bilinear" and "nearest".
- RandFlipd: index reversal along ``spatial_axis``.

Alone, each gives MONAI's result (tests/transforms/test_fused.py: float rounding for images,
exact for masks). Together, the slice is interpolated once instead of twice, so images are a
little sharper than MONAI's chain and a mask is rounded once: a handful of border pixels differ
(the same test measures it). That is the idea of MONAI's own lazy resampling, which MONAI 1.6.1
gets wrong in 2D: ``Compose(lazy=True)`` raises "mat1 and mat2 shapes cannot be multiplied (3x3
and 4x4)" when the zoom and rotation fire and the flip does not, and resamples the masks
bilinearly when all fire (tests/transforms/test_monai_lazy.py fails once MONAI fixes it).

A key is sampled bilinearly when every fused transform uses a linear mode for it and with
nearest neighbour when every one uses a nearest mode. Anything else runs MONAI's transforms one
by one, with metadata tracking off as in ``ComposeWithoutMeta``: other transforms in the list
(e.g. ``EnsureTyped``, intensity augmentation), other modes or padding, ``keep_size=False``,
3D or non-tensor data, missing keys. Fused keys come out as float32 tensors. The MONAI internals
that the draws and settings are read from are read in :mod:`transforms.monai_draws` only.

To train on MONAI's plain transforms instead (its ``Compose`` item by item, MetaTensors, then
``list_data_collate``; one thread, 4 slices: 31 ms against 8 ms at 256x256), override one key:
``--fast_augmentation false`` (train.json passes it to ``BatchAugmentation(fused=...)``).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.data import list_data_collate
from monai.transforms import Compose, RandFlipd, RandRotated, RandZoomd, apply_transform
from monai.utils import MAX_SEED

from transforms import monai_draws
from transforms.compose import ComposeWithoutMeta, metadata_off
from transforms.coordinates import CoordinateMap

__all__ = ["BatchAugmentation", "FusedAugmentation"]

_ZOOM_MODES = {"bilinear": "linear", "linear": "linear", "nearest-exact": "nearest"}
_ROTATE_MODES = {"bilinear": "linear", "nearest": "nearest"}
_ZOOM_PADDING = {"edge": "clamp", "replicate": "clamp", "constant": "zeros", "zeros": "zeros"}
_ROTATE_PADDING = {"zeros": "zeros", "border": "clamp"}


def _name(value: Any) -> str:
    return str(getattr(value, "value", value)).lower()


def _one_padding(modes: Sequence[Any], table: Mapping[str, str]) -> bool:
    """One padding mode for all keys (the keys share one coordinate map), and a supported one."""
    names = {_name(m) for m in modes}
    return len(names) == 1 and next(iter(names)) in table


def _fusable(transform: Any) -> bool:
    """Whether ``transform``'s settings are among those this module reproduces."""
    if getattr(transform, "allow_missing_keys", False):
        return False
    if type(transform) is RandZoomd:
        return (
            monai_draws.zoom_keeps_size(transform)
            and all(_name(m) in _ZOOM_MODES for m in transform.mode)
            and _one_padding(transform.padding_mode, _ZOOM_PADDING)
            and all(a in (None, False) for a in transform.align_corners)
            and not monai_draws.zoom_pad_options(transform)  # such as a non-zero constant value
        )
    if type(transform) is RandRotated:
        return (
            monai_draws.rotate_keeps_size(transform)
            and all(_name(m) in _ROTATE_MODES for m in transform.mode)
            and _one_padding(transform.padding_mode, _ROTATE_PADDING)
        )
    return type(transform) is RandFlipd


def _plan(transforms: Sequence[Any]) -> list[tuple[bool, list[Any]]]:
    """Split into runs: ``(True, [zoom/rotate/flip, ...])`` fused, ``(False, [t])`` one by one."""
    steps: list[tuple[bool, list[Any]]] = []
    for transform in transforms:
        if _fusable(transform):
            last = steps[-1] if steps else None
            if last and last[0] and tuple(last[1][0].keys) == tuple(transform.keys):
                last[1].append(transform)
            else:
                steps.append((True, [transform]))
        else:
            steps.append((False, [transform]))
    return steps


def _kinds(group: Sequence[Any]) -> dict[Hashable, str] | None:
    """Per key, "linear" or "nearest" when every transform of the group agrees; else None."""
    kinds: dict[Hashable, set[str]] = {}
    for transform in group:
        if type(transform) is RandFlipd:
            continue
        table = _ZOOM_MODES if type(transform) is RandZoomd else _ROTATE_MODES
        for key, mode in zip(transform.keys, transform.mode):
            kinds.setdefault(key, set()).add(table[_name(mode)])
    if any(len(k) > 1 for k in kinds.values()):
        return None
    return {key: next(iter(kinds.get(key, {"nearest"}))) for key in group[0].keys}


def _draw(group: Sequence[Any], data: Mapping[Hashable, Any], key: Hashable) -> list[Any]:
    """Per transform of ``group``, what it drew for ``data`` (None: it did not fire), drawn
    through its own randomize methods in the order its ``__call__`` would draw."""
    values: list[Any] = []
    for transform in group:
        if type(transform) is RandZoomd:
            values.append(monai_draws.draw_zoom(transform, data, key))
        elif type(transform) is RandRotated:
            values.append(monai_draws.draw_rotate(transform))
        else:
            values.append(monai_draws.draw_flip(transform))
    return values


def _resample(
    group: Sequence[Any], kinds: dict[Hashable, str] | None, items: Sequence[Any]
) -> dict[Hashable, torch.Tensor] | None:
    """The group fused over ``items`` (``kinds``: its ``_kinds``): per key a (B, C, H, W)
    float32 batch, each item with its own draws; or None, drawing nothing, when the items are
    not what the fused path handles (then MONAI's transforms run one by one)."""
    keys = list(group[0].keys)
    if kinds is None or not items or not all(isinstance(item, Mapping) for item in items):
        return None
    if any(k not in item or not isinstance(item[k], torch.Tensor) for item in items for k in keys):
        return None
    first = items[0][keys[0]]
    shape = tuple(first.shape[1:])
    for key in keys:
        shapes = {tuple(item[key].shape) for item in items}
        if len(shapes) != 1 or any(item[key].device != first.device for item in items):
            return None
        (full,) = shapes
        if len(full) != 3 or full[1:] != shape:
            return None
    if min(shape) < 2:
        return None
    draws = [_draw(group, item, keys[0]) for item in items]
    batch = {
        key: items[0][key][None] if len(items) == 1 else torch.stack([item[key] for item in items])
        for key in keys
    }
    coords = CoordinateMap(shape, first.device, set(kinds.values()), batch=len(items))
    fired = False
    for j in reversed(range(len(group))):  # output -> input: last transform first
        values = [d[j] for d in draws]
        if all(v is None for v in values):
            continue
        fired = True
        transform = group[j]
        # the keys of a group share their padding per transform (checked in _plan)
        if type(transform) is RandFlipd:
            coords.flip(values)
        elif type(transform) is RandRotated:
            coords.rotate(values, _ROTATE_PADDING[_name(transform.padding_mode[0])])
        else:
            coords.zoom(values, _ZOOM_PADDING[_name(transform.padding_mode[0])])
    if not fired:
        return {key: tensor.float() for key, tensor in batch.items()}
    return {key: coords.sample(tensor, kinds[key]) for key, tensor in batch.items()}


class FusedAugmentation(ComposeWithoutMeta):
    """ComposeWithoutMeta for the training augmentations; zoom, rotation and flip resample once.

    Takes Compose's arguments (``transforms`` is the bundle's ``augmentations`` list). Being a
    Compose (hence Randomizable), it marks where a CacheDataset stops caching, and
    ``set_random_state`` reaches the transforms inside it, whose generators make every draw.
    See the module docstring for what is fused and what runs one by one.
    """

    def __init__(self, transforms: Sequence[Any] | Any | None = None, **kwargs: Any) -> None:
        super().__init__(transforms, **kwargs)
        self._steps = _plan(self.transforms)
        self._kinds = [_kinds(group) if fused else None for fused, group in self._steps]

    def __call__(
        self,
        input_: Any,
        start: int = 0,
        end: int | None = None,
        threading: bool = False,
        lazy: bool | None = None,
    ) -> Any:
        if start or end is not None or threading or lazy:  # Compose's partial runs: one by one
            return super().__call__(input_, start=start, end=end, threading=threading, lazy=lazy)
        with metadata_off():
            data = input_
            for (fused, group), kinds in zip(self._steps, self._kinds):
                result = _resample(group, kinds, [data]) if fused else None
                if result is not None:
                    data = dict(data)
                    data.update({key: tensor[0] for key, tensor in result.items()})
                    continue
                for transform in group:
                    data = apply_transform(
                        transform, data, self.map_items, self.unpack_items, log_stats=self.log_stats
                    )
            return data

    def augment_batch(self, items: Sequence[Any]) -> dict[Hashable, torch.Tensor] | None:
        """The augmented keys of ``items`` as (B, C, H, W) batches: the same draws, in the same
        order, as calling this transform on each item in turn, and one resampling per key for
        the whole batch. None, drawing nothing, unless the whole list is one fused group and
        the items suit it (same shapes and device)."""
        if len(self._steps) != 1 or not self._steps[0][0]:
            return None
        with metadata_off():
            return _resample(self._steps[0][1], self._kinds[0], items)


class BatchAugmentation:
    """A DataLoader ``collate_fn`` that augments the batch: FusedAugmentation, batched.

    train.json caches the deterministic transforms in full and hands this to its DataLoader:
    each item gets its own draws from MONAI's transforms (the same draws, in the same order, as
    ``FusedAugmentation`` applied item by item), then every key of the whole batch is resampled
    with one ``grid_sample``, which runs on all cores, and its coordinates are built in one go.
    Keys not augmented (``patient``, ``slice``, ...) go through ``collate_fn``. When the
    augmentations or the items do not suit the batched path, each item goes through
    ``FusedAugmentation`` (and its fallbacks) and the results through ``collate_fn``. With
    ``fused=False`` each item goes through MONAI's plain ``Compose`` of the transforms instead.

    Random state: ``set_random_state`` seeds the transforms as ``FusedAugmentation`` does
    (``pipeline.training.resume.EpochSeeding`` finds this on the trainer's DataLoader and reseeds it
    every epoch). In a DataLoader worker process it reseeds itself once from the worker's seed,
    as MONAI's ``worker_init_fn`` does for a dataset's transforms, so workers draw differently.

    Args:
        transforms: the augmentations (train.json's ``augmentations`` list), as for Compose.
        collate_fn: collates the items' other keys (and everything on the fallback path).
            Default: MONAI's ``list_data_collate``.
        fused: True (default) resamples once per key and batch as above; False runs MONAI's own
            ``Compose(transforms)`` on each item (train.json's ``fast_augmentation``). The bundle
            CLI's strings "true"/"false" are accepted.

    Raises:
        ValueError: ``fused`` is a string other than true/false (yes/no, on/off, 1/0).
    """

    def __init__(
        self, transforms: Sequence[Any] | Any | None = None, collate_fn: Any = None, fused: bool | str = True
    ) -> None:
        self.fused = _flag("fused", fused)
        self.augmentation = FusedAugmentation(transforms) if self.fused else Compose(transforms)
        self.collate_fn = collate_fn if collate_fn is not None else list_data_collate
        self._worker: tuple[int, int] | None = None

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None) -> Any:
        self.augmentation.set_random_state(seed=seed, state=state)
        return self

    def __call__(self, items: Sequence[Any]) -> Any:
        info = torch.utils.data.get_worker_info()
        if info is not None and self._worker != (info.id, info.seed):
            self._worker = (info.id, info.seed)
            self.set_random_state(seed=info.seed % MAX_SEED)
        augmented = self.augmentation.augment_batch(items) if self.fused else None
        if augmented is None:
            return self.collate_fn([self.augmentation(item) for item in items])
        batch = self.collate_fn([{k: v for k, v in item.items() if k not in augmented} for item in items])
        batch.update(augmented)
        return batch


def _flag(name: str, value: bool | str) -> bool:
    """A config switch as a bool; the bundle CLI passes ``--fast_augmentation false`` as a string."""
    word = value.strip().lower() if isinstance(value, str) else None
    if word is not None and word not in ("true", "yes", "on", "1", "false", "no", "off", "0"):
        raise ValueError(f"{name} must be true or false, not {value!r}")
    return word in ("true", "yes", "on", "1") if word is not None else bool(value)
