"""``CoordinateMap``: where each output pixel of a chain of 2D zoom, rotation and flip reads.

Used by :class:`transforms.FusedAugmentation`, which works out what each MONAI transform does in
pixel-index space (see its module docstring) and samples every key once at the coordinates
built here. One map serves a batch of slices of one size, each with its own draws (a slice
whose transform did not fire gets that stage's identity, which changes none of its
coordinates); stages are added output side first (the last transform of the chain first).
Affine stages cost nothing until a border rule or the sampling needs the coordinates as tensors.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

__all__ = ["CoordinateMap"]

_BASES: dict[tuple[int, int, torch.device], tuple[torch.Tensor, torch.Tensor]] = {}
_IDENTITY = ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0))

Coefficient = float | torch.Tensor


def _base(shape: tuple[int, int], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel indices along x (1, 1, W) and y (1, H, 1), cached per shape and device; never
    written to."""
    key = (shape[0], shape[1], device)
    if key not in _BASES:
        if len(_BASES) > 64:
            _BASES.clear()
        _BASES[key] = (
            torch.arange(shape[1], dtype=torch.float32, device=device)[None, None, :],
            torch.arange(shape[0], dtype=torch.float32, device=device)[None, :, None],
        )
    return _BASES[key]


class CoordinateMap:
    """Source pixel coordinates of every output pixel of ``batch`` slices, one stage at a time.

    Coordinates are in grid_sample's (x, y) order: per slice a pending 2x3 affine map (plain
    floats) over a base, which is the pixel grid (two broadcast vectors, no per-pixel work) or
    two (B, H, W) tensors. Affine stages only update the pending maps; a border rule with work
    to do, and the final sampling, apply them. Each stage maps output coordinates to its
    input's coordinates, then applies its border rule: "clamp" repeats the border pixel;
    "zeros" records, per interpolation kind, the fraction of a sample that falls inside
    (bilinear: fades over one pixel; nearest: in or out), then clamps. ``low``/``high`` bound
    each slice's coordinates exactly (affine maps and clamps of a box), so a rule whose input
    lies inside for every slice costs nothing, and applied to a slice whose coordinates lie
    inside it changes nothing. A clamp to the source slice itself, when nothing follows it, is
    left to grid_sample's "border" padding, which is the same clamp.
    """

    def __init__(self, shape: tuple[int, int], device: torch.device, kinds: set[str], batch: int = 1) -> None:
        self.shape = shape  # (H, W)
        self.size = (shape[1], shape[0])  # (W, H)
        self.kinds = kinds
        self.batch = batch
        self.device = device
        self.base = _base(shape, device)
        self.pending = [[list(row) for row in _IDENTITY] for _ in range(batch)]
        self.low = [[0.0, 0.0] for _ in range(batch)]
        self.high = [[float(n - 1) for n in self.size] for _ in range(batch)]
        self.clamp_to: list[list[float]] | None = None  # a clamp not applied yet (pending: identity)
        self.weights: dict[str, torch.Tensor] = {}
        self.grid: torch.Tensor | None = None

    def _coefficient(self, values: Sequence[float]) -> Coefficient:
        """One number when every slice has the same, else a (B, 1, 1) tensor."""
        first = values[0]
        if all(v == first for v in values):
            return float(first)
        return torch.tensor(values, dtype=torch.float32, device=self.device).view(-1, 1, 1)

    def _affine(
        self, matrices: Sequence[Sequence[Sequence[float]]], shifts: Sequence[Sequence[float]]
    ) -> None:
        """Per slice: coordinates <- matrix @ coordinates + shift, and the bounds with them."""
        self._flush()
        for i, (matrix, shift) in enumerate(zip(matrices, shifts)):
            low, high, old = self.low[i], self.high[i], self.pending[i]
            corners = [(a, b) for a in (low[0], high[0]) for b in (low[1], high[1])]
            mapped = [[r[0] * a + r[1] * b + t for a, b in corners] for r, t in zip(matrix, shift)]
            self.low[i], self.high[i] = [min(m) for m in mapped], [max(m) for m in mapped]
            self.pending[i] = [
                [
                    row[0] * old[0][0] + row[1] * old[1][0],
                    row[0] * old[0][1] + row[1] * old[1][1],
                    row[0] * old[0][2] + row[1] * old[1][2] + t,
                ]
                for row, t in zip(matrix, shift)
            ]

    def _clamp(self, tensors: Sequence[torch.Tensor], limits: Sequence[Sequence[float]]) -> None:
        """Clamp x and y in place to 0 .. each slice's limits."""
        for axis, tensor in enumerate(tensors):
            limit = self._coefficient([lim[axis] for lim in limits])
            if isinstance(limit, float):
                tensor.clamp_(0, limit)
            else:
                torch.minimum(tensor.clamp_(min=0), limit, out=tensor)

    def _flush(self) -> None:
        """Apply a deferred clamp: something other than the sampling follows it."""
        if self.clamp_to is not None:
            limits, self.clamp_to = self.clamp_to, None
            self._clamp(self._apply(), limits)

    def _apply(self, out: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The coordinates as two new (B, H, W) tensors (or the two planes of ``out``,
        (B, H, W, 2)); the pending maps become the identity."""
        bx, by = self.base
        h, w = self.shape
        grid = bx.shape != by.shape  # the pixel grid: broadcast vectors
        result = []
        for i in range(2):
            a, b, c = (self._coefficient([p[i][j] for p in self.pending]) for j in range(3))
            target = out[..., i] if out is not None else torch.empty((self.batch, h, w), device=bx.device)
            if grid and self.batch > 1 and not any(isinstance(v, torch.Tensor) for v in (a, b, c)):
                # the same map for every slice: compute one plane and repeat it
                torch.add(bx * a + c, by * b, out=target[:1])
                target[1:] = target[:1]
            elif grid:
                torch.add(bx * a + c, by * b, out=target)
            elif isinstance(b, float) and b == 0:
                torch.add(bx * a if not (isinstance(a, float) and a == 1) else bx, c, out=target)
            elif isinstance(a, float) and a == 0:
                torch.add(by * b if not (isinstance(b, float) and b == 1) else by, c, out=target)
            else:
                torch.add(bx * a + c, by * b, out=target)
            result.append(target)
        self.base = (result[0], result[1])
        self.pending = [[list(row) for row in _IDENTITY] for _ in range(self.batch)]
        return self.base

    def border(self, limits: Sequence[Sequence[float]], rule: str) -> None:
        """The border rule of a stage whose input spans 0 .. ``limits`` per slice and axis (x, y)."""
        if all(
            lo >= 0 and hi <= lim
            for low, high, limit in zip(self.low, self.high, limits)
            for lo, hi, lim in zip(low, high, limit)
        ):
            return
        self._flush()
        if rule == "zeros":
            x, y = self._apply()
            # per axis, min(c + 1, lim + 1 - c): >= 1 inside, the bilinear share of the border
            # pixel within one pixel outside, <= 0.5 where nearest rounding lands outside
            margin = [
                torch.minimum(c + 1, (self._coefficient([lim[axis] for lim in limits]) + 1) - c)
                for axis, c in enumerate((x, y))
            ]
            for kind in self.kinds:
                if kind == "nearest":
                    inside = (torch.minimum(*margin) >= 0.5).float()
                else:
                    inside = margin[0].clamp_(0, 1).mul_(margin[1].clamp_(0, 1))
                previous = self.weights.get(kind)
                self.weights[kind] = inside if previous is None else inside.mul_(previous)
            self._clamp((x, y), limits)
        else:
            self.clamp_to = [[float(v) for v in lim] for lim in limits]
        for low, high, limit in zip(self.low, self.high, limits):
            low[:] = [min(max(lo, 0.0), lim) for lo, lim in zip(low, limit)]
            high[:] = [min(max(hi, 0.0), lim) for hi, lim in zip(high, limit)]

    def flip(self, axes: Sequence[Sequence[int] | None]) -> None:
        """Per slice, the spatial axes to reverse (0 = H, 1 = W); None or none: no flip."""
        matrices, shifts = [], []
        for item_axes in axes:
            scale, shift = [1.0, 1.0], [0.0, 0.0]
            for axis in item_axes or ():
                component = 1 - axis
                scale[component], shift[component] = -1.0, float(self.size[component] - 1)
            matrices.append([[scale[0], 0.0], [0.0, scale[1]]])
            shifts.append(shift)
        self._affine(matrices, shifts)

    def rotate(self, angles: Sequence[float | None], rule: str) -> None:
        """Per slice, the angle in radians (None: no rotation)."""
        # MONAI: source (y, x) = R(angle) @ output (y, x) about the centre; here in (x, y) order
        cx, cy = (self.size[0] - 1) / 2, (self.size[1] - 1) / 2
        matrices, shifts = [], []
        for angle in angles:
            if angle is None:
                matrices.append([[1.0, 0.0], [0.0, 1.0]])
                shifts.append([0.0, 0.0])
                continue
            cos, sin = math.cos(angle), math.sin(angle)
            matrices.append([[cos, sin], [-sin, cos]])
            shifts.append([cx - cos * cx - sin * cy, cy + sin * cx - cos * cy])
        self._affine(matrices, shifts)
        self.border([[float(n - 1) for n in self.size]] * self.batch, rule)

    def zoom(self, factors: Sequence[Sequence[float] | None], rule: str) -> None:
        """Per slice, the factors per spatial axis (H, W) as MONAI draws them (None: no zoom)."""
        zoomed, offsets, ratios = [], [], []
        for item in factors:
            if item is None:  # factor 1: offset 0, ratio 1, bounds unchanged
                item = (1.0, 1.0)
            xy = [item[1], item[0]]
            m = [int(math.floor(float(n) * f)) for n, f in zip(self.size, xy)]
            zoomed.append(m)
            offsets.append(
                [float(mm // 2 - n // 2 if mm > n else -((n - mm) // 2)) for n, mm in zip(self.size, m)]
            )
            ratios.append([n / mm for n, mm in zip(self.size, m)])  # interpolate's source index map
        eye = [[1.0, 0.0], [0.0, 1.0]]
        self._affine([eye] * self.batch, offsets)
        self.border([[float(v - 1) for v in m] for m in zoomed], rule)  # MONAI's crop or pad back to n
        self._affine(
            [[[r[0], 0.0], [0.0, r[1]]] for r in ratios], [[0.5 * v - 0.5 for v in r] for r in ratios]
        )
        self.border([[float(n - 1) for n in self.size]] * self.batch, "clamp")

    def sample(self, images: torch.Tensor, kind: str) -> torch.Tensor:
        """``images`` (B, C, H, W) read at the coordinates with ``kind`` interpolation; float32."""
        if images.dtype != torch.float32:
            images = images.float()
        if self.grid is None:
            source = [float(n - 1) for n in self.size]
            if self.clamp_to is not None and any(lim != source for lim in self.clamp_to):
                self._flush()  # a clamp other than grid_sample's own border padding
            self.clamp_to = None
            w, h = self.size
            scale = [[2 / max(w - 1, 1), 0.0], [0.0, 2 / max(h - 1, 1)]]
            self._affine([scale] * self.batch, [[-1.0, -1.0]] * self.batch)  # align_corners=True
            self.grid = torch.empty((self.batch, h, w, 2), device=images.device)
            self._apply(out=self.grid)
        out = F.grid_sample(
            images,
            self.grid,
            mode="nearest" if kind == "nearest" else "bilinear",
            padding_mode="border",
            align_corners=True,
        )
        weight = self.weights.get(kind)
        return out if weight is None else out.mul_(weight[:, None])
