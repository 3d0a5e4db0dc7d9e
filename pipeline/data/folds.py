"""Patient-level k-fold cross-validation folds, stratified by lesion volume, written once and reused.

The fold file is the split file's counterpart for cross-validation (:mod:`pipeline.data.splits`):
readable JSON beside the split file (``<split stem>.folds<K>.json``), written once (atomically,
under a lock, so two folds starting together write it once) and reused by every fold run; a
file that no longer matches the data is refused, not repaired: a patient in two folds (leakage),
patients the dataset lacks, patients of the dataset in no fold, a fold count other than
``--folds``, an empty fold, or another dataset fingerprint.

Stratification (:func:`assign_folds`): the lesion-free patients form the first strata, then the
patients with a lesion sorted by lesion volume (voxels, from the mask areas) are cut into strata
of K consecutive patients; the members of each stratum are shuffled (seeded) and dealt one per
fold, to the folds holding the fewest patients first (ties in a seeded random order). Each fold
so gets one patient of every full stratum (small and large lesions alike), the lesion-free
patients are spread over the folds, and fold sizes differ by at most one.

Fold ``i`` is then a train/validation split like any other (:func:`write_fold_split`): validation
= fold ``i``, training = the other folds, written to ``<split stem>.folds<K>/fold<i>.json`` in the
split file's format, so a fold's training run and its evaluation read it like a split file.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

from pipeline import atomic
from pipeline.data.splits import SplitError

__all__ = ["FoldError", "assign_folds", "check_folds_setting", "fold_split", "load_or_create_folds"]

logger = logging.getLogger(__name__)

QUOTES = " \"'"


class FoldError(SplitError):
    """The fold file or a fold's split file is malformed or does not match the data; the message
    names the file and the fix."""


def _names(values: Sequence[str], limit: int = 5) -> str:
    shown = ", ".join(values[:limit])
    return shown + (f" and {len(values) - limit} more" if len(values) > limit else "")


def _whole(value: object) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        return None
    return int(value)


def check_folds_setting(
    folds: object, fold: object = "any", n_patients: int | None = None
) -> tuple[int, int | None]:
    """``(folds, fold)`` as integers, or a ValueError naming the key and the fix.

    Args:
        folds: ``--folds``, a whole number >= 2 (at most ``n_patients`` when given).
        fold: ``--fold``, 0 to ``folds - 1``; "any" (default) skips it; None is refused with the fix.
        n_patients: patients of the dataset, or None (not known yet).
    """
    k = _whole(folds)
    if isinstance(folds, str):  # `--folds '"5"'`: the bundle CLI passed a quoted string through
        raise ValueError(
            f"--folds must be a whole number >= 2, not the string {folds!r}: pass it without quotes "
            f"(--folds {folds.strip(QUOTES) or 5})"
        )
    if k is None or k < 2:
        raise ValueError(f"--folds must be a whole number >= 2, not {folds!r}")
    if n_patients is not None and k > n_patients:
        raise ValueError(
            f"--folds {k} is more than the {n_patients} patients of the dataset: every fold needs a "
            f"patient; pass --folds {n_patients} or fewer"
        )
    if fold == "any":
        return k, None
    if fold is None:
        raise ValueError(
            "crossval.json trains one fold per run: pass --fold I (0 to "
            f"{k - 1}), or run every fold with `python -m pipeline crossval --folds {k}`"
        )
    i = _whole(fold)
    if i is None or not 0 <= i < k:
        raise ValueError(f"--fold must be a whole number from 0 to {k - 1} (--folds {k}), not {fold!r}")
    return k, i


def assign_folds(lesion_voxels: Mapping[str, float], folds: int, seed: int = 0) -> list[list[str]]:
    """Deal the patients into ``folds`` folds, stratified by lesion volume (module docstring).

    Args:
        lesion_voxels: patient -> lesion volume (voxels, >= 0; 0: lesion-free).
        folds: number of folds, 2 to the number of patients.
        seed: seed of the shuffles (``numpy.random.default_rng``), >= 0. Default 0.

    Returns:
        ``folds`` lists of patient names, each sorted; every patient in exactly one.

    Raises:
        ValueError: ``folds`` or ``seed`` out of range, or a negative or non-finite volume.
    """
    names = sorted(lesion_voxels)
    k, _ = check_folds_setting(folds, n_patients=len(names))
    if _whole(seed) is None or seed < 0:
        raise ValueError(f"seed must be a whole number >= 0, not {seed!r}")
    for name in names:
        volume = lesion_voxels[name]
        if not np.isfinite(volume) or volume < 0:
            raise ValueError(f"lesion volume of patient {name} must be finite and >= 0, not {volume!r}")
    rng = np.random.default_rng(int(seed))
    free = [n for n in names if lesion_voxels[n] == 0]
    lesion = sorted((n for n in names if lesion_voxels[n] > 0), key=lambda n: (lesion_voxels[n], n))
    strata = [group[i : i + k] for group in (free, lesion) for i in range(0, len(group), k)]
    dealt: list[list[str]] = [[] for _ in range(k)]
    for stratum in strata:
        members = [stratum[j] for j in rng.permutation(len(stratum))]
        tiebreak = rng.permutation(k)
        order = sorted(range(k), key=lambda f: (len(dealt[f]), tiebreak[f]))
        for patient, target in zip(members, order):
            dealt[target].append(patient)
    return [sorted(fold) for fold in dealt]


def _fix(path: Path) -> str:
    return (
        f"Delete {path} to deal new folds (then retrain every fold: the fold runs were trained on the "
        "old ones), or restore it"
    )


def _validate(
    path: Path, data: object, patients: list[str], folds: int, fingerprint: str | None
) -> list[list[str]]:
    lists = data.get("folds") if isinstance(data, dict) else None
    if not isinstance(lists, list) or not all(
        isinstance(f, list) and all(isinstance(p, str) for p in f) for f in lists
    ):
        raise FoldError(
            f'the fold file {path} is malformed: expected a JSON object with "folds", a list of lists of '
            f"patient names. {_fix(path)}."
        )
    if len(lists) != folds:
        raise FoldError(
            f"the fold file {path} holds {len(lists)} folds, but --folds is {folds}: pass --folds "
            f"{len(lists)} to use it, or: {_fix(path)}."
        )
    where: dict[str, list[int]] = {}
    for i, fold in enumerate(lists):
        for patient in fold:
            where.setdefault(patient, []).append(i)
    twice = sorted(p for p, f in where.items() if len(f) > 1)
    if twice:
        shown = "; ".join(f"{p} in folds {', '.join(map(str, where[p]))}" for p in twice[:5])
        raise FoldError(
            f"the fold file {path} puts {len(twice)} patients in more than one fold ({shown}): a fold "
            f"model would be validated on patients it trained on. {_fix(path)}."
        )
    unknown = sorted(set(where) - set(patients))
    if unknown:
        raise FoldError(
            f"the fold file {path} names {len(unknown)} patients that are not in the dataset "
            f"({_names(unknown)}); it was made for other data. {_fix(path)}."
        )
    missing = sorted(set(patients) - set(where))
    if missing:
        raise FoldError(
            f"the fold file {path} is stale: {len(missing)} patients of the dataset are in no fold "
            f"({_names(missing)}). {_fix(path)}."
        )
    empty = [i for i, fold in enumerate(lists) if not fold]
    if empty:
        raise FoldError(f"the fold file {path} has empty folds ({', '.join(map(str, empty))}). {_fix(path)}.")
    recorded = data.get("dataset_fingerprint")
    if fingerprint is not None and recorded is not None and recorded != fingerprint:
        raise FoldError(
            f"the fold file {path} was dealt for the dataset with fingerprint {recorded}; this dataset's "
            f"files give {fingerprint} (slices were added, removed or renamed). {_fix(path)}."
        )
    return [sorted(fold) for fold in lists]


def load_or_create_folds(
    patients: Sequence[str],
    lesion_voxels: Callable[[], Mapping[str, float]],
    fold_file: str | Path,
    folds: int,
    seed: int = 0,
    fingerprint: str | None = None,
) -> dict:
    """The folds of a dataset: reuse ``fold_file`` if it exists (validated), else deal and write it.

    Args:
        patients: patient names of the dataset.
        lesion_voxels: called only when the file is created: patient -> lesion voxels.
        fold_file: the JSON file ``{"folds": [[...], ...], "k", "seed", "dataset_fingerprint",
            "lesion_voxels", "stratification"}``; parent folders are created.
        folds: number of folds (``--folds``).
        seed: seed of a new file's shuffles; a reused file keeps its own. Default 0.
        fingerprint: the dataset fingerprint (:func:`pipeline.data.discovery.fingerprint`), recorded
            in a new file and checked against a reused one. Default None: not checked.

    Returns:
        ``{"folds": [[...], ...], "seed": s, "fold_file": str}``.

    Raises:
        ValueError: ``folds`` out of range.
        FoldError: an existing fold file is refused (the message says why and how to fix it).
    """
    names = sorted(set(patients))
    k, _ = check_folds_setting(folds, n_patients=len(names))
    path = Path(fold_file).expanduser()
    with atomic.locked(path):  # folds started together: one deals, the others reuse
        if path.exists():
            try:
                data = json.loads(path.read_text())
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
                raise FoldError(f"cannot read the fold file {path}: {err}. {_fix(path)}.") from err
            dealt = _validate(path, data, names, k, fingerprint)
            logger.info("Reusing the fold file %s: %d folds (seed %s)", path, k, data.get("seed"))
            return {"folds": dealt, "seed": data.get("seed"), "fold_file": str(path)}
        volumes = {p: float(v) for p, v in lesion_voxels().items() if p in set(names)}
        if sorted(volumes) != names:
            raise ValueError(f"lesion_voxels lacks patients: {_names(sorted(set(names) - set(volumes)))}")
        dealt = assign_folds(volumes, k, seed)
        record = {
            "folds": dealt,
            "k": k,
            "seed": int(seed),
            "dataset_fingerprint": fingerprint,
            "lesion_voxels": {p: int(v) if float(v).is_integer() else v for p, v in volumes.items()},
            "stratification": "lesion-free patients first, then strata of k patients by lesion volume, "
            "each dealt one per fold (seeded)",
        }
        atomic.write_json(path, record)
    logger.info(
        "Wrote a new fold file %s: %d folds of %s patients (seed %d)", path, k, [len(f) for f in dealt], seed
    )
    return {"folds": dealt, "seed": int(seed), "fold_file": str(path)}


def fold_split(folds: Sequence[Sequence[str]], fold: int) -> dict[str, list[str]]:
    """``{"train": the other folds' patients, "val": fold ``fold``'s}``, sorted."""
    val = sorted(folds[fold])
    train = sorted(p for i, f in enumerate(folds) if i != fold for p in f)
    return {"train": train, "val": val}


def write_fold_split(split_file: str | Path, folds: dict, fold: int) -> Path:
    """Write fold ``fold``'s split file (the split file format), or check the existing one.

    A fold run's split file that no longer matches the fold file (which was edited or dealt again
    after the fold was trained) is refused: the fold's model trained on its own split.

    Raises:
        FoldError: the existing split file differs from the fold file's fold.
    """
    path = Path(split_file)
    expected = fold_split(folds["folds"], fold)
    if path.exists():
        try:
            data = json.loads(path.read_text())
            recorded = {key: sorted(data[key]) for key in ("train", "val")}
        except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as err:
            raise FoldError(
                f"cannot read fold {fold}'s split file {path} ({err}). Delete it to rewrite it from the "
                f"fold file {folds['fold_file']} (and retrain fold {fold} if it trained on it)."
            ) from err
        if recorded != expected:
            moved = sorted(set(recorded["val"]) ^ set(expected["val"]))
            raise FoldError(
                f"fold {fold}'s split file {path} does not match the fold file {folds['fold_file']} "
                f"(patients moved: {_names(moved)}): the fold file changed after fold {fold} was trained "
                f"on its split. Restore the fold file, or delete {path} and retrain fold {fold}."
            )
        return path
    record = {
        **expected,
        "seed": folds["seed"],
        "n_val": len(expected["val"]),
        "fold": fold,
        "folds": len(folds["folds"]),
        "fold_file": folds["fold_file"],
    }
    return atomic.write_json(path, record)
