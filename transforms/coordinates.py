"""``CoordinateMap``: where each output pixel of a chain of 2D zoom, rotation and flip reads.

Used by :class:`transforms.FusedAugmentation`, which works out what each MONAI transform does in
pixel-index space (see its module docstring) and samples every key once at the coordinates
built here. Stages are added output side first (the last transform of the chain first); affine
stages cost nothing until a border rule or the sampling needs the coordinates as tensors.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

__all__ = ["CoordinateMap"]

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


class CoordinateMap:
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
