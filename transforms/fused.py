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
(the same test measures it). That is the idea of MONAI's own lazy resampling, which fails on 2D
inputs in MONAI 1.6.1 (a 3x3 by 4x4 matrix product).

A key is sampled bilinearly when every fused transform uses a linear mode for it and with
nearest neighbour when every one uses a nearest mode. Anything else runs MONAI's transforms one
by one, with metadata tracking off as in ``ComposeWithoutMeta``: other transforms in the list
(e.g. ``EnsureTyped``, intensity augmentation), other modes or padding, ``keep_size=False``,
3D or non-tensor data, missing keys. Fused keys come out as float32 tensors.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.data import get_track_meta, set_track_meta
from monai.transforms import RandFlipd, RandRotated, RandZoomd, apply_transform

from transforms.compose import ComposeWithoutMeta

__all__ = ["FusedAugmentation"]

_LINEAR = {"bilinear", "linear"}
_NEAREST = {"nearest", "nearest-exact"}
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
        zoom = transform.rand_zoom
        return (
            zoom.keep_size
            and all(_name(m) in _ZOOM_MODES for m in transform.mode)
            and _one_padding(transform.padding_mode, _ZOOM_PADDING)
            and all(a in (None, False) for a in transform.align_corners)
            and not zoom.kwargs  # np.pad options such as a non-zero constant value
        )
    if type(transform) is RandRotated:
        rotate = transform.rand_rotate
        return (
            rotate.keep_size
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
        table = _ZOOM_MODES if type(transform) is RandZoomd else _ROTATE_MODES
        if type(transform) is RandFlipd:
            continue
        for key, mode in zip(transform.keys, transform.mode):
            kinds.setdefault(key, set()).add(table[_name(mode)])
    if any(len(k) > 1 for k in kinds.values()):
        return None
    return {key: next(iter(kinds.get(key, {"nearest"}))) for key in group[0].keys}


_BASES: dict[tuple[int, int, torch.device], tuple[torch.Tensor, torch.Tensor]] = {}


def _base(shape: tuple[int, int], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel indices along x (1, W) and y (H, 1), cached per shape and device; never written to."""
    key = (shape[0], shape[1], device)
    if key not in _BASES:
        if len(_BASES) > 64:
            _BASES.clear()
        _BASES[key] = (
            torch.arange(shape[1], dtype=torch.float32, device=device)[None, :],
            torch.arange(shape[0], dtype=torch.float32, device=device)[:, None],
        )
    return _BASES[key]


class _Coordinates:
    """Source pixel coordinates of every output pixel, mapped one stage at a time.

    Coordinates are in grid_sample's (x, y) order: a pending 2x3 affine map (plain floats) over
    a base, which is the pixel grid (two broadcast vectors, no per-pixel work) or two (H, W)
    tensors. Affine stages only update the pending map; a border rule with work to do, and
    the final sampling, apply it. Each stage maps output coordinates to its input's
    coordinates, then applies its border rule: "clamp" repeats the border pixel; "zeros"
    records, per interpolation kind, the fraction of a sample that falls inside (bilinear:
    fades over one pixel; nearest: in or out), then clamps. ``low``/``high`` bound the
    coordinates exactly (affine maps and clamps of a box), so a rule whose input lies inside
    costs nothing. A clamp to the source slice itself, when nothing follows it, is left to
    grid_sample's "border" padding, which is the same clamp.
    """

    def __init__(self, shape: tuple[int, int], device: torch.device, kinds: set[str]) -> None:
        self.shape = shape  # (H, W)
        self.size = (shape[1], shape[0])  # (W, H)
        self.kinds = kinds
        self.base = _base(shape, device)
        self.owned = False  # whether self.base may be written in place
        self.pending = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]
        self.low = [0.0, 0.0]
        self.high = [float(n - 1) for n in self.size]
        self.clamp_to: list[float] | None = None  # a clamp not applied yet (pending is identity)
        self.weights: dict[str, torch.Tensor] = {}
        self.grid: torch.Tensor | None = None

    def _affine(self, matrix: list[list[float]], shift: list[float]) -> None:
        """coordinates <- matrix @ coordinates + shift, and the bounds with them."""
        self._flush()
        corners = [(a, b) for a in (self.low[0], self.high[0]) for b in (self.low[1], self.high[1])]
        mapped = [[r[0] * a + r[1] * b + t for a, b in corners] for r, t in zip(matrix, shift)]
        self.low, self.high = [min(m) for m in mapped], [max(m) for m in mapped]
        old = self.pending
        self.pending = [
            [
                row[0] * old[0][0] + row[1] * old[1][0],
                row[0] * old[0][1] + row[1] * old[1][1],
                row[0] * old[0][2] + row[1] * old[1][2] + t,
            ]
            for row, t in zip(matrix, shift)
        ]

    def _flush(self) -> None:
        """Apply a deferred clamp: something other than the sampling follows it."""
        if self.clamp_to is not None:
            limits, self.clamp_to = self.clamp_to, None
            x, y = self._apply()
            x.clamp_(0, limits[0])
            y.clamp_(0, limits[1])

    def _apply(self, out: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The coordinates as two new (H, W) tensors (or the two planes of ``out``, (H, W, 2));
        the pending map becomes the identity."""
        bx, by = self.base
        h, w = self.shape
        result = []
        for i, (a, b, c) in enumerate(self.pending):
            target = out[..., i] if out is not None else torch.empty((h, w), device=bx.device)
            if bx.shape != by.shape:  # the pixel grid: a row vector and a column vector
                torch.add(bx * a + c, by * b, out=target)
            elif b == 0:
                torch.add(bx * a if a != 1 else bx, c, out=target)
            elif a == 0:
                torch.add(by * b if b != 1 else by, c, out=target)
            else:
                torch.add(bx * a + c, by, alpha=b, out=target)
            result.append(target)
        self.base = (result[0], result[1])
        self.owned = out is None
        self.pending = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]
        return self.base

    def border(self, limits: Sequence[float], rule: str) -> None:
        """The border rule of a stage whose input spans 0 .. ``limits`` per axis (x, y)."""
        if all(lo >= 0 and hi <= lim for lo, hi, lim in zip(self.low, self.high, limits)):
            return
        self._flush()
        if rule == "zeros":
            x, y = self._apply()
            # per axis, min(c + 1, lim + 1 - c): >= 1 inside, the bilinear share of the border
            # pixel within one pixel outside, <= 0.5 where nearest rounding lands outside
            margin = [torch.minimum(c + 1, (lim + 1) - c) for c, lim in zip((x, y), limits)]
            for kind in self.kinds:
                if kind == "nearest":
                    inside = (torch.minimum(*margin) >= 0.5).float()
                else:
                    inside = margin[0].clamp_(0, 1).mul_(margin[1].clamp_(0, 1))
                previous = self.weights.get(kind)
                self.weights[kind] = inside if previous is None else inside.mul_(previous)
            x.clamp_(0, limits[0])
            y.clamp_(0, limits[1])
        else:
            self.clamp_to = [float(lim) for lim in limits]
        self.low = [min(max(lo, 0.0), lim) for lo, lim in zip(self.low, limits)]
        self.high = [min(max(hi, 0.0), lim) for hi, lim in zip(self.high, limits)]

    def flip(self, axes: Sequence[int]) -> None:
        """``axes`` are spatial axes (0 = H, 1 = W)."""
        scale, shift = [1.0, 1.0], [0.0, 0.0]
        for axis in axes:
            component = 1 - axis
            scale[component], shift[component] = -1.0, float(self.size[component] - 1)
        self._affine([[scale[0], 0.0], [0.0, scale[1]]], shift)

    def rotate(self, angle: float, rule: str) -> None:
        # MONAI: source (y, x) = R(angle) @ output (y, x) about the centre; here in (x, y) order
        cos, sin = math.cos(angle), math.sin(angle)
        cx, cy = (self.size[0] - 1) / 2, (self.size[1] - 1) / 2
        self._affine([[cos, sin], [-sin, cos]], [cx - cos * cx - sin * cy, cy + sin * cx - cos * cy])
        self.border([n - 1 for n in self.size], rule)

    def zoom(self, factors: Sequence[float], rule: str) -> None:
        """``factors`` per spatial axis (H, W), as MONAI draws them."""
        factors = [factors[1], factors[0]]
        zoomed = [int(math.floor(float(n) * f)) for n, f in zip(self.size, factors)]
        offset = [m // 2 - n // 2 if m > n else -((n - m) // 2) for n, m in zip(self.size, zoomed)]
        self._affine([[1.0, 0.0], [0.0, 1.0]], [float(o) for o in offset])
        self.border([m - 1 for m in zoomed], rule)  # MONAI's crop or pad back to n pixels
        ratio = [n / m for n, m in zip(self.size, zoomed)]  # interpolate's source index map
        self._affine([[ratio[0], 0.0], [0.0, ratio[1]]], [0.5 * r - 0.5 for r in ratio])
        self.border([n - 1 for n in self.size], "clamp")

    def sample(self, image: torch.Tensor, kind: str) -> torch.Tensor:
        """``image`` (C, H, W) read at the coordinates with ``kind`` interpolation; float32."""
        if image.dtype != torch.float32:
            image = image.float()
        if self.grid is None:
            if self.clamp_to is not None and self.clamp_to != [float(n - 1) for n in self.size]:
                self._flush()  # a clamp other than grid_sample's own border padding
            self.clamp_to = None
            w, h = self.size
            scale = [2 / max(w - 1, 1), 2 / max(h - 1, 1)]
            self._affine([[scale[0], 0.0], [0.0, scale[1]]], [-1.0, -1.0])  # align_corners=True
            self.grid = torch.empty((1, h, w, 2), device=image.device)
            self._apply(out=self.grid[0])
        out = F.grid_sample(
            image[None],
            self.grid,
            mode="nearest" if kind == "nearest" else "bilinear",
            padding_mode="border",
            align_corners=True,
        )[0]
        weight = self.weights.get(kind)
        return out if weight is None else out.mul_(weight)


def _spatial_axes(axis: Any) -> list[int]:
    if axis is None:
        return [0, 1]
    return [int(a) % 2 for a in np.atleast_1d(axis)]


def _apply_group(
    group: Sequence[Any], kinds: dict[Hashable, str] | None, data: Mapping[Hashable, Any]
) -> dict[Hashable, Any] | None:
    """The group fused (``kinds``: its ``_kinds``), or None when ``data`` is not what the fused
    path handles."""
    keys = list(group[0].keys)
    if kinds is None or any(k not in data or not isinstance(data[k], torch.Tensor) for k in keys):
        return None
    tensors = [data[k] for k in keys]
    shape = tuple(tensors[0].shape[1:])
    if any(t.ndim != 3 or tuple(t.shape[1:]) != shape or t.device != tensors[0].device for t in tensors):
        return None
    if min(shape) < 2:
        return None
    # the draws, in the order MONAI's __call__ methods make them
    stages: list[tuple[str, Any, Any]] = []
    for transform in group:
        if type(transform) is RandZoomd:
            transform.randomize(None)
            transform.rand_zoom.randomize(data[keys[0]])
            if transform._do_transform:
                stages.append(("zoom", transform, tuple(float(z) for z in transform.rand_zoom._zoom)))
        elif type(transform) is RandRotated:
            transform.randomize(None)
            transform.rand_rotate.randomize()
            if transform._do_transform:
                stages.append(("rotate", transform, float(transform.rand_rotate.x)))
        else:
            transform.randomize(None)
            if transform._do_transform:
                stages.append(("flip", transform, _spatial_axes(transform.flipper.spatial_axis)))
    d = dict(data)
    if not stages:
        d.update({key: tensor.float() for key, tensor in zip(keys, tensors)})
        return d
    coords = _Coordinates(shape, tensors[0].device, set(kinds.values()))
    for kind, transform, value in reversed(stages):  # output -> input: last transform first
        # the keys of a group share their padding per transform (checked in _plan)
        pad = _name(transform.padding_mode[0]) if kind != "flip" else None
        if kind == "flip":
            coords.flip(value)
        elif kind == "rotate":
            coords.rotate(value, _ROTATE_PADDING[pad])
        else:
            coords.zoom(value, _ZOOM_PADDING[pad])
    for key, tensor in zip(keys, tensors):
        d[key] = coords.sample(tensor, kinds[key])
    return d


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
        previous = get_track_meta()
        set_track_meta(False)
        try:
            data = input_
            for (fused, group), kinds in zip(self._steps, self._kinds):
                result = _apply_group(group, kinds, data) if fused and isinstance(data, Mapping) else None
                if result is not None:
                    data = result
                    continue
                for transform in group:
                    data = apply_transform(
                        transform, data, self.map_items, self.unpack_items, log_stats=self.log_stats
                    )
            return data
        finally:
            set_track_meta(previous)
