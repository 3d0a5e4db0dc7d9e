"""The data of one cross-validation fold: ``bundle/configs/crossval.json``'s ``data``.

:func:`prepare_fold_data` makes fold ``i`` a normal training run: it ensures and checks the dataset
as training does, loads or deals the fold file (:mod:`pipeline.data.folds`; lesion volumes from
the mask areas, read only when the file is dealt), writes (or checks) fold ``i``'s split file
(validation = fold ``i``, training = the other folds) and hands that split file to
:func:`pipeline.data.prepare.prepare_data`, which does the rest exactly as for any run.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from pathlib import Path

from pipeline.data.discovery import discover, fingerprint
from pipeline.data.folds import check_folds_setting, load_or_create_folds, write_fold_split
from pipeline.data.prepare import PreparedData, prepare_data, ready_dataset
from pipeline.data.weights import mask_areas

logger = logging.getLogger(__name__)


def lesion_voxels(records: list[dict]) -> dict[str, int]:
    """Patient -> lesion voxels (the nonzero pixels of all its masks) of :func:`discover`'s records."""
    areas = mask_areas([r["label"] for r in records])
    totals: dict[str, int] = defaultdict(int)
    for record, area in zip(records, areas):
        totals[record["patient"]] += int(area)
    return dict(totals)


def fold_split_file(fold_file: str | Path, fold: int) -> Path:
    """Fold ``fold``'s split file: ``<fold file without .json>/fold<fold>.json``."""
    path = Path(fold_file)
    return path.with_suffix("") / f"fold{fold}.json"


def prepare_fold_data(
    dataset_dir: str,
    split_file: str,
    fold_file: str,
    folds: int,
    fold: int,
    phantom_dir: str,
    phantom_patients: int = 110,
    n_val: int | None = None,
    seed: int = 0,
    check: bool = True,
    phantom_hard: bool = False,
    sampling_floor: float = 0.1,
    intensity: str = "slice",
    crop: str = "none",
) -> PreparedData:
    """:func:`pipeline.data.prepare.prepare_data` of fold ``fold``: its validation set is the fold.

    Args:
        split_file: fold ``fold``'s split file; crossval.json derives it from ``fold_file``
            (:func:`fold_split_file`), and another one (``--split_file``) is refused.
        fold_file: the fold file, written once beside the split file and reused.
        folds: ``--folds``, the number of folds (>= 2).
        fold: ``--fold``, 0 to ``folds - 1``.
        n_val: must be None: a fold's validation set is the fold.
        Others: as for :func:`pipeline.data.prepare.prepare_data`; ``seed`` also deals a new fold file.

    Raises:
        ValueError: ``folds``/``fold`` out of range, ``n_val`` given, or another ``split_file``.
        DatasetError: the dataset is missing or faulty, or the fold file or split file is refused
            (:class:`pipeline.data.folds.FoldError`, naming the file and the fix).
    """
    k, i = check_folds_setting(folds, fold)
    if n_val is not None:
        raise ValueError(
            f"--n_val {n_val} does not apply to cross-validation: fold {i}'s validation patients are the "
            "fold (about 1/K of the patients); drop --n_val, or change --folds"
        )
    expected = fold_split_file(fold_file, i)
    if Path(split_file).expanduser().resolve() != expected.expanduser().resolve():
        raise ValueError(
            f"--split_file {split_file}: with crossval.json fold {i}'s split file is {expected}, derived "
            f"from the fold file {fold_file}; drop --split_file (edit the fold file to choose the folds)"
        )
    root, generated = ready_dataset(dataset_dir, phantom_dir, phantom_patients, seed, phantom_hard, check)
    records = discover(root)
    patients = sorted({r["patient"] for r in records})
    check_folds_setting(k, i, n_patients=len(patients))
    dealt = load_or_create_folds(
        patients, lambda: lesion_voxels(records), fold_file, k, seed=seed, fingerprint=fingerprint(records)
    )
    write_fold_split(split_file, dealt, i)
    logger.info("Cross-validation fold %d of %d: validating on %d patients", i, k, len(dealt["folds"][i]))
    prepared = prepare_data(
        dataset_dir,
        split_file,
        phantom_dir,
        phantom_patients=phantom_patients,
        seed=seed,
        check=False,
        phantom_hard=phantom_hard,
        sampling_floor=sampling_floor,
        intensity=intensity,
        crop=crop,
    )
    prepared.generated_phantom = prepared.generated_phantom or generated  # generated above, not there
    return prepared
