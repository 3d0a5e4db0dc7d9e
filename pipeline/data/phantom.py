"""Phantom brain MRI in the kaggle_3m layout: ``python -m pipeline synth --out DIR``.

The real LGG data (Buda, Saha & Mazurowski 2019) cannot be downloaded here, so the project
generates its own default dataset. Each patient is a 3-D head (scalp, skull, CSF, cortex with
sulci, white matter, ventricles, deep grey nuclei, vessels) with one irregular
FLAIR-hyperintense lesion, sliced axially into 256x256 RGB TIFFs (pre-contrast T1,
FLAIR, post-contrast T1) and 0/255 masks. Bright scalp fat, periventricular caps, small white
matter spots, a bias field, blurred lesion edges and per-patient lesion contrast keep a global
FLAIR threshold far from the answer, while shape and context make lesions learnable. Per-patient
seeds come from ``SeedSequence.spawn``, so the same seed gives the same bytes with any
``workers``.

Every patient has a lesion by default, as in the real set: its 110 patients are lower-grade
glioma cases, each with a FLAIR abnormality mask (about 35% of the slices are positive; the
tutorial's per-volume Dice divides by the lesion area without a guard). ``lesion_free`` (a
fraction of the patients) adds lesion-free patients to test how a model copes with them; a
lesion-free patient with any false positive scores a per-volume Dice of 0.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import datetime as dt
import logging
import math
import multiprocessing
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tifffile

from pipeline import staging

logger = logging.getLogger(__name__)

SIZE = 256
CSV_HEADER = (
    "Patient,RNASeqCluster,MethylationCluster,miRNACluster,CNCluster,RPPACluster,OncosignCluster,"
    "COCCluster,histological_type,neoplasm_histologic_grade,tumor_tissue_site,laterality,"
    "tumor_location,gender,age_at_initial_pathologic,race,ethnicity,death01"
)
# clinical columns after Patient: (lowest, highest, probability of a blank), as in the real file
_CSV_VALUES = [(1, 4, 0.16), (1, 5, 0.01), (1, 4, 0), (1, 3, 0.02), (1, 4, 0.11), (1, 3, 0.05)]
_CSV_VALUES += [(1, 3, 0), (1, 3, 0.01), (1, 2, 0.01), (1, 1, 0.01), (1, 3, 0.01), (1, 6, 0.01)]
_CSV_VALUES += [(1, 2, 0.01), (20, 75, 0.01), (2, 3, 0.02), (1, 2, 0.07), (0, 1, 0.01)]
INSTITUTIONS = {"CS": 16, "DU": 45, "EZ": 1, "FG": 14, "HT": 34}  # real patient counts
# relative intensity of each tissue in (pre-contrast T1, FLAIR, post-contrast T1)
_TISSUES = {
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
class _Patient:
    folder: str
    n_slices: int
    has_lesion: bool
    flair_copy: int | None  # channel (0 pre, 2 post) replaced by FLAIR, as for the real "missing" ones
    seed: np.random.SeedSequence


def _check_int(name: str, value: object, minimum: int, maximum: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise ValueError(f"{name} must be an integer, not {value!r}")
    if value < minimum or (maximum is not None and value > maximum):
        bound = f"between {minimum} and {maximum}" if maximum is not None else f">= {minimum}"
        raise ValueError(f"{name} must be {bound}, not {value}")


def _plan(n_patients: int, seed: int, lesion_free: float = 0.0) -> list[_Patient]:
    """Names, slice counts, lesion-free and channel-copied patients, and one seed per patient."""
    plan_seed, *seeds = np.random.SeedSequence(seed).spawn(n_patients + 1)
    rng = np.random.default_rng(plan_seed)
    weights = np.array(list(INSTITUTIONS.values()), dtype=float)
    codes = rng.choice(list(INSTITUTIONS), size=n_patients, p=weights / weights.sum())
    numbers = rng.choice(np.arange(1000, 10000), size=n_patients, replace=False)
    days = rng.integers(0, 16 * 365, size=n_patients)
    # real counts: mostly 20-44 slices, a few long series up to 88 (mean about 36)
    kind = rng.random(n_patients)
    counts = np.where(kind < 0.9, rng.integers(20, 45, n_patients), rng.integers(45, 71, n_patients))
    counts = np.where(kind > 0.97, rng.integers(71, 89, n_patients), counts)
    order = rng.permutation(n_patients)
    n_post, n_pre = round(n_patients * 9 / 110), round(n_patients * 6 / 110)
    copies = {int(i): 2 for i in order[:n_post]} | {int(i): 0 for i in order[n_post : n_post + n_pre]}
    no_lesion = set(rng.permutation(n_patients)[: round(n_patients * lesion_free)].tolist())
    return [
        _Patient(
            folder=f"TCGA_{codes[i]}_{numbers[i]}_{dt.date(1990, 1, 1) + dt.timedelta(int(days[i])):%Y%m%d}",
            n_slices=int(counts[i]),
            has_lesion=i not in no_lesion,
            flair_copy=copies.get(i),
            seed=seeds[i],
        )
        for i in range(n_patients)
    ]


def _bspline_matrix(n: int, spacing: float, cell: float) -> np.ndarray:
    """(n, m) cubic B-spline weights taking m control points every ``cell`` to n samples."""
    m = math.ceil(n * spacing / cell) + 3
    t = (np.arange(n) + 0.5)[:, None] * spacing / cell + 1.0 - np.arange(m)[None, :]
    t = np.abs(t)
    w = np.where(t < 1, (4 - 6 * t**2 + 3 * t**3) / 6, np.where(t < 2, (2 - t) ** 3 / 6, 0.0))
    return w.astype(np.float32)


class _Noise:
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


def _ramp(level: np.ndarray, width: float = 1.0) -> np.ndarray:
    """Soft membership in [0, 1], 0.5 where ``level`` is 0 (partial-volume edges)."""
    return np.clip(level * np.float32(1 / width) + np.float32(0.5), 0, 1)


def _paint(vol: np.ndarray, member: np.ndarray, tissue: tuple) -> None:
    """Blend ``tissue`` (three floats or float32 arrays) into ``vol`` (3, ...) by ``member``."""
    for c in range(3):
        vol[c] += member * (tissue[c] - vol[c])


def _ellipsoid(u: np.ndarray, v: np.ndarray, z: np.ndarray, centre, axes) -> np.ndarray:
    """Normalised radius of an axis-aligned ellipsoid (1 on its surface)."""
    q = ((u - centre[0]) / axes[0]) ** 2 + ((v - centre[1]) / axes[1]) ** 2
    return np.sqrt(q[None] + (((z - centre[2]) / axes[2]) ** 2)[:, None, None])


def _render(patient: _Patient) -> tuple[np.ndarray, np.ndarray]:
    """One patient's slices: images (n, 256, 256, 3) uint8 and masks (n, 256, 256) uint8 0/255."""
    rng = np.random.default_rng(patient.seed)
    n = patient.n_slices
    a, b, c = rng.uniform(68, 80), rng.uniform(84, 98), rng.uniform(64, 76)  # brain semi-axes, px
    c_low = c * rng.uniform(1.1, 1.3)  # the brain is flatter below its centre
    scalp, skull, csf = rng.uniform(5, 9), rng.uniform(4, 7), rng.uniform(1.5, 3)
    z = np.linspace(-rng.uniform(0.75, 0.95) * c_low, c + rng.uniform(0.4, 0.8) * (scalp + skull), n)
    z = z.astype(np.float32)
    dz = float(z[1] - z[0])
    angle = rng.uniform(-0.25, 0.25)
    y, x = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32) - np.float32(SIZE / 2 - 0.5)
    x, y = x - rng.normal(0, 4), y - rng.normal(0, 4)
    u = (np.cos(angle) * x + np.sin(angle) * y).astype(np.float32)
    v = (-np.sin(angle) * x + np.cos(angle) * y).astype(np.float32)
    zn = np.where(z >= 0, z / c, z / c_low).astype(np.float32)
    jitter = rng.uniform(0.92, 1.08, size=(len(_TISSUES), 3))
    tissue = {k: tuple(float(x) for x in np.multiply(t, j)) for (k, t), j in zip(_TISSUES.items(), jitter)}
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
    noise = {name: _Noise(rng, n, dz, cell) for name, cell in _FIELDS.items()}
    bias_amp, sigma = rng.uniform(0.1, 0.22), np.float32(rng.uniform(0.015, 0.04))
    if patient.has_lesion:
        axes = (rng.uniform(15, 42), rng.uniform(15, 45), rng.uniform(0.2, 0.45) * (z[-1] - z[0]) / 2)
        centre = (
            rng.choice([-1, 1]) * rng.uniform(12, 38),
            rng.uniform(-45, 45),
            rng.uniform(-0.25, 0.55) * c,
        )
        lesion_shape = _Noise(rng, n, dz, min(axes[:2]) * 0.8)
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
        scalp_in = _ramp(depth + (csf + skull + scalp))
        head[zs] = scalp_in[:, ::4, ::4] > 0.5
        _paint(vol, scalp_in, fat)
        _paint(vol, _ramp(depth + (csf + skull)), tissue["skull"])
        _paint(vol, _ramp(depth + csf), tissue["csf"])
        brain = _ramp(depth)
        _paint(vol, brain, tissue["grey"])
        _paint(vol, _ramp(depth - cortex + 2.5 * noise["gyri"][zs]), tissue["white"])
        sulcus = _ramp((0.16 - np.abs(noise["sulci"][zs])) * 10) * _ramp(cortex + 2 - depth, 2)
        _paint(vol, sulcus * brain, tissue["csf"])
        for centre_, axes_ in deep:
            _paint(vol, _ramp((1 - _ellipsoid(u, v, z[zs], centre_, axes_)) * 10), tissue["deep"])
        for centre_, axes_ in ventricles:
            level = (1 - _ellipsoid(u, v, z[zs], centre_, axes_)) * 8
            _paint(vol, _ramp(level + rim[0], 2), rim[1])
            _paint(vol, _ramp(level), tissue["csf"])
        white = _ramp(depth - cortex - 3)
        _paint(vol, _ramp((noise["spots"][zs] - spots[0]) * 6) * white, spots[1])
        _paint(vol, _ramp((noise["patches"][zs] - patches[0]) * 4) * white, patches[1])
        vessel = _ramp((0.06 - np.abs(noise["vessels"][zs])) * 20) * _ramp(noise["vessel_gate"][zs] - 0.3)
        _paint(vol, vessel * brain, tissue["vessel"])
        if patient.has_lesion:
            shape = 1 - _ellipsoid(u, v, z[zs], centre, axes) + 0.3 * lesion_shape[zs]
            inside = _ramp(depth - 1, 2)
            mask[zs] = (shape > 0) & (inside > 0.5)
            flair = lesion[1] * (1 + 0.1 * noise["lesion_texture"][zs])
            _paint(vol, _ramp(shape + offset, blur) * inside, (lesion[0], flair, lesion[2]))
            if cyst:  # FLAIR-dark core, still inside the mask
                _paint(vol, _ramp((shape - 0.7) * 8) * inside * 0.6, tissue["csf"])
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


def _write_patient(patient: _Patient, out_dir: Path) -> None:
    """Render one patient into ``<out_dir>/<folder>`` (``out_dir``: the staging folder)."""
    image, mask = _render(patient)
    (out_dir / patient.folder).mkdir()
    for k in range(1, patient.n_slices + 1):
        stem = out_dir / patient.folder / f"{patient.folder}_{k}"
        tifffile.imwrite(f"{stem}.tif", image[k - 1], photometric="rgb", metadata=None)
        tifffile.imwrite(f"{stem}_mask.tif", mask[k - 1], photometric="minisblack", metadata=None)


def _write_csv(patients: list[_Patient], path: Path, seed: int) -> None:
    rng = np.random.default_rng([seed, 1])
    with open(path, "w", newline="") as f:
        f.write(CSV_HEADER + "\n")
        writer = csv.writer(f, lineterminator="\n")
        for name in sorted(p.folder.rsplit("_", 1)[0] for p in patients):
            values = [int(rng.integers(lo, hi + 1)) for lo, hi, _ in _CSV_VALUES]
            blanks = [rng.random() < blank for _, _, blank in _CSV_VALUES]
            writer.writerow([name] + ["" if e else v for v, e in zip(values, blanks)])


@contextlib.contextmanager
def _environment(**values: str) -> Iterator[None]:
    """Set environment variables for the processes started inside the block."""
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def generate_dataset(
    out_dir: str | Path,
    n_patients: int = 110,
    seed: int = 0,
    workers: int | None = None,
    lesion_free: float = 0.0,
) -> Path:
    """Write a phantom dataset in the kaggle_3m layout (docs/data.md) into ``out_dir``.

    Written to a staging folder beside ``out_dir`` and renamed into place when complete: a killed
    run leaves ``out_dir`` as it was; the next run removes its leftovers (:mod:`pipeline.staging`).

    Args:
        out_dir: target folder, created if missing; must hold no ``TCGA_*`` folders yet.
        n_patients: number of patients, default 110 (the real set's count); 1 to 9000.
        seed: non-negative seed, default 0; the same seed gives byte-identical files.
        workers: worker processes, default None (``os.cpu_count()``); 1 renders in-process.
        lesion_free: fraction of patients without a lesion, 0 to 1, default 0 (the real set has
            none).

    Returns:
        ``out_dir`` as a Path.

    Raises:
        ValueError: an argument is out of range, or ``out_dir`` is a file.
        FileExistsError: ``out_dir`` already holds patient folders.
    """
    _check_int("n_patients", n_patients, 1, 9000)
    _check_int("seed", seed, 0)
    if workers is not None:
        _check_int("workers", workers, 1)
    if isinstance(lesion_free, bool) or not isinstance(lesion_free, int | float) or not 0 <= lesion_free <= 1:
        raise ValueError(f"lesion_free must be a fraction between 0 and 1, not {lesion_free!r}")
    target = Path(out_dir).expanduser().resolve()  # symlinked: stage beside the folder it points to
    if target.exists() and not target.is_dir():
        raise ValueError(f"out_dir {out_dir} is a file; expected a folder for the phantom dataset")
    start = time.perf_counter()
    with staging.locked(target):
        staging.recover(target)
        if target.is_dir() and any(target.glob("TCGA_*")):
            raise FileExistsError(
                f"out_dir {out_dir} is not empty: it already holds TCGA_* patient folders. "
                "Choose an empty (or new) folder for the phantom dataset."
            )
        patients = _plan(n_patients, seed, lesion_free)
        jobs = sorted(patients, key=lambda p: -p.n_slices)  # longest first balances the workers
        workers = min(workers or os.cpu_count() or 1, n_patients)
        with staging.staged(target, f"phantom dataset: {n_patients} patients, seed {seed}\n") as folder:
            if workers == 1:
                for patient in jobs:
                    _write_patient(patient, folder)
            else:
                # one BLAS thread per worker: the workers already fill the cores, more threads thrash
                with _environment(OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1"):
                    pool = multiprocessing.get_context("spawn").Pool(workers)
                with pool:
                    pool.starmap(_write_patient, [(patient, folder) for patient in jobs], chunksize=1)
            _write_csv(patients, folder / "data.csv", seed)
    logger.info(
        "Wrote the phantom dataset %s: %d patients, %d slices in %.1f s (seed %d)",
        target,
        n_patients,
        sum(p.n_slices for p in patients),
        time.perf_counter() - start,
        seed,
    )
    return Path(out_dir)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the ``synth`` command's arguments on ``parser``."""
    parser.add_argument("--out", required=True, type=Path, help="empty or new folder to write")
    parser.add_argument("--patients", type=int, default=110, help="number of patients (default 110)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--workers", type=int, default=None, help="processes (default: all CPUs)")
    parser.add_argument(
        "--lesion-free",
        type=float,
        default=0.0,
        metavar="FRACTION",
        help="fraction of patients without a lesion (default 0, as in the real set)",
    )


def main(args: argparse.Namespace) -> int:
    """Run ``python -m pipeline synth``; prints a one-line summary, returns the exit code."""
    start = time.perf_counter()
    try:
        generate_dataset(args.out, args.patients, args.seed, args.workers, args.lesion_free)
    except (ValueError, FileExistsError) as err:
        logger.error("%s", err)
        return 2
    slices = sum(p.n_slices for p in _plan(args.patients, args.seed))
    seconds = time.perf_counter() - start
    print(
        f"Wrote {args.patients} patients, {slices} slices to {args.out} in {seconds:.1f} s (seed {args.seed})"
    )
    return 0
