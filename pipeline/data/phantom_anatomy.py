"""The phantom's anatomy: one patient's 3-D head rendered as RGB slices and masks.

Each patient is a 3-D head (scalp, skull, CSF, cortex with sulci, white matter, ventricles, deep
grey nuclei, vessels) with one irregular FLAIR-hyperintense lesion (or none), sliced axially into
RGB images (pre-contrast T1, FLAIR, post-contrast T1) and 0/1 masks. The planning of patients,
the files and the command line are in :mod:`pipeline.data.phantom`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

SIZE = 256

TISSUES = {
    "skull": (0.06, 0.05, 0.08),
    "csf": (0.18, 0.10, 0.22),
    "grey": (0.55, 0.62, 0.58),
    "white": (0.80, 0.48, 0.76),
    "deep": (0.62, 0.56, 0.64),
    "vessel": (0.70, 0.62, 1.00),
}
# feature size in pixels of each smooth noise field of a patient
_FIELDS = {
    "surface": 40,
    "gyri": 10,
    "sulci": 14,
    "spots": 6,
    "patches": 12,
    "vessels": 16,
    "vessel_gate": 30,
}
_FIELDS |= {"lesion_texture": 6, "bias": 100, "bias0": 80, "bias1": 80, "bias2": 80, "texture": 4}
_SLAB = 2


@dataclass(frozen=True)
class PatientPlan:
    folder: str
    n_slices: int
    has_lesion: bool
    flair_copy: int | None  # channel (0 pre, 2 post) replaced by FLAIR, as for the real "missing" ones
    seed: np.random.SeedSequence


def _bspline_matrix(n: int, spacing: float, cell: float) -> np.ndarray:
    """(n, m) cubic B-spline weights taking m control points every ``cell`` to n samples."""
    m = math.ceil(n * spacing / cell) + 3
    t = (np.arange(n) + 0.5)[:, None] * spacing / cell + 1.0 - np.arange(m)[None, :]
    t = np.abs(t)
    w = np.where(t < 1, (4 - 6 * t**2 + 3 * t**3) / 6, np.where(t < 2, (2 - t) ** 3 / 6, 0.0))
    return w.astype(np.float32)


class Noise:
    """Smooth 3-D noise of unit standard deviation and feature size ``cell`` pixels.

    A coarse random grid upsampled by separable cubic B-splines: far faster than Gaussian
    filtering a full-resolution volume, and evaluated a slab of slices at a time.
    """

    def __init__(self, rng: np.random.Generator, n: int, dz: float, cell: float) -> None:
        mz, my = _bspline_matrix(n, dz, cell), _bspline_matrix(SIZE, 1.0, cell)
        coarse = rng.standard_normal((mz.shape[1], my.shape[1], my.shape[1]), dtype=np.float32)
        self.planes = np.matmul(my, coarse @ my.T)
        self.mz = mz / np.float32(0.479**1.5)  # variance of B-spline-smoothed white noise per axis

    def __getitem__(self, zs: slice) -> np.ndarray:
        rows = self.mz[zs]
        used = np.flatnonzero(rows.any(axis=0))
        lo, hi = used[0], used[-1] + 1
        return np.tensordot(rows[:, lo:hi], self.planes[lo:hi], axes=1)


def ramp(level: np.ndarray, width: float = 1.0) -> np.ndarray:
    """Soft membership in [0, 1], 0.5 where ``level`` is 0 (partial-volume edges)."""
    return np.clip(level * np.float32(1 / width) + np.float32(0.5), 0, 1)


def paint(vol: np.ndarray, member: np.ndarray, tissue: tuple) -> None:
    """Blend ``tissue`` (three floats or float32 arrays) into ``vol`` (3, ...) by ``member``."""
    for c in range(3):
        vol[c] += member * (tissue[c] - vol[c])


def ellipsoid(u: np.ndarray, v: np.ndarray, z: np.ndarray, centre, axes) -> np.ndarray:
    """Normalised radius of an axis-aligned ellipsoid (1 on its surface)."""
    q = ((u - centre[0]) / axes[0]) ** 2 + ((v - centre[1]) / axes[1]) ** 2
    return np.sqrt(q[None] + (((z - centre[2]) / axes[2]) ** 2)[:, None, None])


def head_geometry(rng: np.random.Generator, n: int, lowest: tuple[float, float]):
    """A head's shape and its sampling grid, drawn from ``rng`` (the draws in a fixed order).

    Args:
        rng: the patient's generator.
        n: slices.
        lowest: the range of the lowest slice, as a fraction of the brain's semi-axis below its
            centre (the default phantom 0.75-0.95; the hard one reaches lower, 0.85-1.0).

    Returns:
        ``((a, b, c, c_low, scalp, skull, csf), z, dz, u, v, zn)``: the brain's semi-axes (px; below
        its centre ``c_low``, as the brain is flatter there) and layer widths, the slice heights
        ``z`` (n,) and their step, the rotated and shifted in-plane coordinates ``u``, ``v``
        (SIZE, SIZE), and the normalised heights ``zn``; all float32.
    """
    a, b, c = rng.uniform(68, 80), rng.uniform(84, 98), rng.uniform(64, 76)
    c_low = c * rng.uniform(1.1, 1.3)
    scalp, skull, csf = rng.uniform(5, 9), rng.uniform(4, 7), rng.uniform(1.5, 3)
    z = np.linspace(-rng.uniform(*lowest) * c_low, c + rng.uniform(0.4, 0.8) * (scalp + skull), n)
    z = z.astype(np.float32)
    dz = float(z[1] - z[0])
    angle = rng.uniform(-0.25, 0.25)
    y, x = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32) - np.float32(SIZE / 2 - 0.5)
    x, y = x - rng.normal(0, 4), y - rng.normal(0, 4)
    u = (np.cos(angle) * x + np.sin(angle) * y).astype(np.float32)
    v = (-np.sin(angle) * x + np.cos(angle) * y).astype(np.float32)
    zn = np.where(z >= 0, z / c, z / c_low).astype(np.float32)
    return (a, b, c, c_low, scalp, skull, csf), z, dz, u, v, zn


def render_patient(patient: PatientPlan) -> tuple[np.ndarray, np.ndarray]:
    """One patient's slices: images (n, 256, 256, 3) uint8 and masks (n, 256, 256) uint8 0/255."""
    rng = np.random.default_rng(patient.seed)
    n = patient.n_slices
    (a, b, c, c_low, scalp, skull, csf), z, dz, u, v, zn = head_geometry(rng, n, (0.75, 0.95))
    jitter = rng.uniform(0.92, 1.08, size=(len(TISSUES), 3))
    tissue = {k: tuple(float(x) for x in np.multiply(t, j)) for (k, t), j in zip(TISSUES.items(), jitter)}
    fat = (0.9, rng.uniform(0.65, 1.05), 0.9)  # scalp fat: bright in T1 and in FLAIR
    cortex = rng.uniform(4, 6)
    vy, vz = rng.uniform(-10, 5), rng.uniform(0.05, 0.25) * c
    deep = [
        ((side * rng.uniform(17, 22), vy + 8, vz - 12), tuple(rng.uniform((9, 12, 9), (13, 17, 13))))
        for side in (-1, 1)
    ]
    ventricles = [
        ((side * rng.uniform(6, 10), vy, vz), tuple(rng.uniform((5, 24, 14), (9, 34, 22))))
        for side in (-1, 1)
    ]
    rim = (rng.uniform(1.5, 4), (0.72, rng.uniform(0.6, 0.85), 0.72))  # periventricular FLAIR rim
    spots = (rng.uniform(2.1, 2.8), (0.74, rng.uniform(0.65, 0.9), 0.74))  # white-matter spots
    # larger FLAIR-bright patches with normal T1 (gliosis-like): lesion mimics outside the mask
    patches = (rng.uniform(2.3, 3.3), (tissue["white"][0], rng.uniform(0.62, 0.85), tissue["white"][2]))
    noise = {name: Noise(rng, n, dz, cell) for name, cell in _FIELDS.items()}
    bias_amp, sigma = rng.uniform(0.1, 0.22), np.float32(rng.uniform(0.015, 0.04))
    if patient.has_lesion:
        axes = (rng.uniform(15, 42), rng.uniform(15, 45), rng.uniform(0.2, 0.45) * (z[-1] - z[0]) / 2)
        centre = (
            rng.choice([-1, 1]) * rng.uniform(12, 38),
            rng.uniform(-45, 45),
            rng.uniform(-0.25, 0.55) * c,
        )
        lesion_shape = Noise(rng, n, dz, min(axes[:2]) * 0.8)
        blur = rng.uniform(1.5, 5.5) / ((axes[0] + axes[1]) / 2)  # edge width, in shape units
        offset = rng.uniform(-0.5, 0.5) * blur
        lesion = (
            rng.uniform(0.45, 0.6),
            tissue["white"][1] * rng.uniform(1.25, 2.1),
            rng.uniform(0.48, 0.62),
        )
        cyst = rng.random() < 0.2

    signal = np.empty((3, n, SIZE, SIZE), np.float32)
    head = np.empty((n, SIZE // 4, SIZE // 4), bool)
    mask = np.zeros((n, SIZE, SIZE), bool)
    for z0 in range(0, n, _SLAB):  # a few slices at a time keeps the arrays in cache
        zs = slice(z0, min(z0 + _SLAB, n))
        rho = np.sqrt(((u / a) ** 2 + (v / b) ** 2)[None] + (zn[zs] ** 2)[:, None, None])
        depth = (1 - rho) * np.float32((a + b + c) / 3) + 2.5 * noise["surface"][zs]  # px inside brain
        vol = np.zeros((3, *depth.shape), np.float32)
        scalp_in = ramp(depth + (csf + skull + scalp))
        head[zs] = scalp_in[:, ::4, ::4] > 0.5
        paint(vol, scalp_in, fat)
        paint(vol, ramp(depth + (csf + skull)), tissue["skull"])
        paint(vol, ramp(depth + csf), tissue["csf"])
        brain = ramp(depth)
        paint(vol, brain, tissue["grey"])
        paint(vol, ramp(depth - cortex + 2.5 * noise["gyri"][zs]), tissue["white"])
        sulcus = ramp((0.16 - np.abs(noise["sulci"][zs])) * 10) * ramp(cortex + 2 - depth, 2)
        paint(vol, sulcus * brain, tissue["csf"])
        for centre_, axes_ in deep:
            paint(vol, ramp((1 - ellipsoid(u, v, z[zs], centre_, axes_)) * 10), tissue["deep"])
        for centre_, axes_ in ventricles:
            level = (1 - ellipsoid(u, v, z[zs], centre_, axes_)) * 8
            paint(vol, ramp(level + rim[0], 2), rim[1])
            paint(vol, ramp(level), tissue["csf"])
        white = ramp(depth - cortex - 3)
        paint(vol, ramp((noise["spots"][zs] - spots[0]) * 6) * white, spots[1])
        paint(vol, ramp((noise["patches"][zs] - patches[0]) * 4) * white, patches[1])
        vessel = ramp((0.06 - np.abs(noise["vessels"][zs])) * 20) * ramp(noise["vessel_gate"][zs] - 0.3)
        paint(vol, vessel * brain, tissue["vessel"])
        if patient.has_lesion:
            shape = 1 - ellipsoid(u, v, z[zs], centre, axes) + 0.3 * lesion_shape[zs]
            inside = ramp(depth - 1, 2)
            mask[zs] = (shape > 0) & (inside > 0.5)
            flair = lesion[1] * (1 + 0.1 * noise["lesion_texture"][zs])
            paint(vol, ramp(shape + offset, blur) * inside, (lesion[0], flair, lesion[2]))
            if cyst:  # FLAIR-dark core, still inside the mask
                paint(vol, ramp((shape - 0.7) * 8) * inside * 0.6, tissue["csf"])
        field = noise["bias"][zs] * bias_amp
        texture = 1 + 0.04 * noise["texture"][zs]
        for ch in range(3):
            clean = vol[ch] * np.exp(field + 0.04 * noise[f"bias{ch}"][zs]) * texture
            real = clean + sigma * rng.standard_normal(clean.shape, dtype=np.float32)
            imag = sigma * rng.standard_normal(clean.shape, dtype=np.float32)
            signal[ch, zs] = np.sqrt(real * real + imag * imag)  # Rician magnitude noise

    image = np.empty((n, SIZE, SIZE, 3), np.uint8)
    for ch in range(3):
        top = np.percentile(signal[ch, :, ::4, ::4][head], 99.8)
        image[..., ch] = np.clip(signal[ch] * np.float32(rng.uniform(215, 250) / top), 0, 255).round()
    if patient.flair_copy is not None:
        image[..., patient.flair_copy] = image[..., 1]
    return image, mask.astype(np.uint8) * np.uint8(255)
