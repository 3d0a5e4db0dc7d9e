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

``hard`` (``synth --hard``) renders the same plan with what makes real data hard (inferior
slices, FLAIR-bright mimics, subtle and small lesions, artefacts, bias fields, scanner gains;
:mod:`pipeline.data.phantom_hard`) and 15% lesion-free patients unless ``lesion_free`` says
otherwise. Without it the output is byte-for-byte what it was before the hard variant existed.
``synth`` ends with a realism check measured from the written files
(:mod:`pipeline.data.phantom_realism`).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import datetime as dt
import logging
import multiprocessing
import os
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import tifffile

from pipeline import atomic
from pipeline.data import phantom_realism
from pipeline.data.phantom_anatomy import PatientPlan, render_patient
from pipeline.data.phantom_hard import HardOptions, render_hard_patient

logger = logging.getLogger(__name__)

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
HARD_LESION_FREE = 0.15
HARD_DEFAULTS = {f.name: f.default for f in dataclasses.fields(HardOptions)}
_HARD_HELP = {
    "bias": ("range of the bias-field strength", None),
    "contrast": ("range of lesion FLAIR relative to grey matter", None),
    "small_lesions": ("chance that a lesion is small (0.2-3 mL)", "FRACTION"),
    "artefacts": ("chance that a slice has a FLAIR motion or flow artefact", "FRACTION"),
}


# relative intensity of each tissue in (pre-contrast T1, FLAIR, post-contrast T1)
def _check_int(name: str, value: object, minimum: int, maximum: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise ValueError(f"{name} must be an integer, not {value!r}")
    if value < minimum or (maximum is not None and value > maximum):
        bound = f"between {minimum} and {maximum}" if maximum is not None else f">= {minimum}"
        raise ValueError(f"{name} must be {bound}, not {value}")


def _plan(n_patients: int, seed: int, lesion_free: float = 0.0) -> list[PatientPlan]:
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
        PatientPlan(
            folder=f"TCGA_{codes[i]}_{numbers[i]}_{dt.date(1990, 1, 1) + dt.timedelta(int(days[i])):%Y%m%d}",
            n_slices=int(counts[i]),
            has_lesion=i not in no_lesion,
            flair_copy=copies.get(i),
            seed=seeds[i],
        )
        for i in range(n_patients)
    ]


def _write_patient(patient: PatientPlan, out_dir: Path, hard: HardOptions | None = None) -> None:
    """Render one patient into ``<out_dir>/<folder>`` (``out_dir``: the staging folder)."""
    image, mask = render_patient(patient) if hard is None else render_hard_patient(patient, hard)
    (out_dir / patient.folder).mkdir()
    for k in range(1, patient.n_slices + 1):
        stem = out_dir / patient.folder / f"{patient.folder}_{k}"
        tifffile.imwrite(f"{stem}.tif", image[k - 1], photometric="rgb", metadata=None)
        tifffile.imwrite(f"{stem}_mask.tif", mask[k - 1], photometric="minisblack", metadata=None)


def _write_csv(patients: list[PatientPlan], path: Path, seed: int) -> None:
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
    lesion_free: float | None = None,
    hard: bool | HardOptions = False,
) -> Path:
    """Write a phantom dataset in the kaggle_3m layout (docs/data.md) into ``out_dir``.

    Written to a staging folder beside ``out_dir`` and renamed into place when complete: a killed
    run leaves ``out_dir`` as it was; the next run removes its leftovers (:mod:`pipeline.atomic`).

    Args:
        out_dir: target folder, created if missing; must hold no ``TCGA_*`` folders yet.
        n_patients: number of patients, default 110 (the real set's count); 1 to 9000.
        seed: non-negative seed, default 0; the same seed gives byte-identical files.
        workers: worker processes, default None (``os.cpu_count()``); 1 renders in-process.
        lesion_free: fraction of patients without a lesion, 0 to 1, default None: 0 (the real set
            has none), or 0.15 with ``hard``.
        hard: default False (the default phantom); True or a :class:`HardOptions` renders the
            hard variant (:mod:`pipeline.data.phantom_hard`), True with the default options.

    Returns:
        ``out_dir`` as a Path.

    Raises:
        ValueError: an argument is out of range (``hard`` neither a bool nor HardOptions), or
            ``out_dir`` is a file.
        FileExistsError: ``out_dir`` already holds patient folders.
    """
    _check_int("n_patients", n_patients, 1, 9000)
    _check_int("seed", seed, 0)
    if workers is not None:
        _check_int("workers", workers, 1)
    if not isinstance(hard, bool | HardOptions):
        raise ValueError(f"hard must be True, False or a HardOptions, not {hard!r}")
    options = HardOptions() if hard is True else hard or None
    if lesion_free is None:
        lesion_free = 0.0 if options is None else HARD_LESION_FREE
    if isinstance(lesion_free, bool) or not isinstance(lesion_free, int | float) or not 0 <= lesion_free <= 1:
        raise ValueError(f"lesion_free must be a fraction between 0 and 1, not {lesion_free!r}")
    target = Path(out_dir).expanduser().resolve()  # symlinked: stage beside the folder it points to
    if target.exists() and not target.is_dir():
        raise ValueError(f"out_dir {out_dir} is a file; expected a folder for the phantom dataset")
    start = time.perf_counter()
    with atomic.locked(target):
        atomic.recover(target)
        if target.is_dir() and any(target.glob("TCGA_*")):
            raise FileExistsError(
                f"out_dir {out_dir} is not empty: it already holds TCGA_* patient folders. "
                "Choose an empty (or new) folder for the phantom dataset."
            )
        patients = _plan(n_patients, seed, lesion_free)
        jobs = sorted(patients, key=lambda p: -p.n_slices)  # longest first balances the workers
        workers = min(workers or os.cpu_count() or 1, n_patients)
        variant = "" if options is None else " (hard)"
        marker = f"phantom dataset{variant}: {n_patients} patients, seed {seed}\n"
        with atomic.staged(target, marker) as folder:
            args = [(patient, folder) if options is None else (patient, folder, options) for patient in jobs]
            if workers == 1:
                for job in args:
                    _write_patient(*job)
            else:
                # one BLAS thread per worker: the workers already fill the cores, more threads thrash
                with _environment(OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1"):
                    pool = multiprocessing.get_context("spawn").Pool(workers)
                with pool:
                    pool.starmap(_write_patient, args, chunksize=1)
            _write_csv(patients, folder / "data.csv", seed)
    logger.info(
        "Wrote the phantom dataset%s %s: %d patients, %d slices in %.1f s (seed %d)",
        variant,
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
        default=None,
        metavar="FRACTION",
        help="fraction of patients without a lesion (default 0, as in the real set; 0.15 with --hard)",
    )
    hard = parser.add_argument_group("the hard variant (pipeline/data/phantom_hard.py)")
    hard.add_argument(
        "--hard", action="store_true", help="write the hard variant instead of the default phantom"
    )
    for name, default in HARD_DEFAULTS.items():
        flag, (help_text, metavar) = name.replace("_", "-"), _HARD_HELP[name]
        pair = isinstance(default, tuple)
        hard.add_argument(
            f"--{flag}",
            type=float,
            nargs=2 if pair else None,
            metavar=("LOW", "HIGH") if pair else metavar,
            default=None,
            help=f"{help_text} (default {' '.join(map(str, default)) if pair else default}; needs --hard)",
        )


def hard_options(args: argparse.Namespace) -> HardOptions | None:
    """The :class:`HardOptions` that ``args`` ask for, or None without ``--hard``.

    Raises:
        ValueError: a hard-variant option without ``--hard``, or one out of range.
    """
    given = {name: getattr(args, name) for name in HARD_DEFAULTS if getattr(args, name) is not None}
    if not args.hard:
        if given:
            flags = ", ".join(f"--{name.replace('_', '-')}" for name in given)
            raise ValueError(f"{flags}: options of the hard variant, add --hard to use them")
        return None
    return HardOptions(**{k: tuple(v) if isinstance(v, list) else v for k, v in given.items()})


def main(args: argparse.Namespace) -> int:
    """Run ``python -m pipeline synth``: generate, then log the realism check once; the exit code."""
    try:
        options = hard_options(args)
        generate_dataset(args.out, args.patients, args.seed, args.workers, args.lesion_free, options or False)
    except (ValueError, FileExistsError) as err:
        logger.error("%s", err)
        return 2
    logger.info("%s", phantom_realism.summary(phantom_realism.measure(args.out)))
    return 0
