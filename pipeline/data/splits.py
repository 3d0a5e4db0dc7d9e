"""Patient-level train/validation split, written once to a JSON file and reused.

As in nnU-Net's ``splits_final.json``: the file is readable (indent 2, sorted keys) and may be
edited by hand; every later run reuses it, so validation patients never change silently, and a
file that no longer matches the data is refused instead of repaired.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from os import PathLike
from pathlib import Path

import numpy as np

from pipeline.atomic import write_json
from pipeline.data.discovery import DatasetError

__all__ = ["SplitError", "default_n_val", "load_or_create_split"]

logger = logging.getLogger(__name__)

# the tutorial keeps 30 of the 110 patients for validation
TUTORIAL_VAL, TUTORIAL_PATIENTS = 30, 110


class SplitError(DatasetError):
    """The split file is malformed or does not match the data; the message names the file and the fix."""


def _check_int(name: str, value: object, minimum: int, maximum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise ValueError(f"{name} must be an integer, not {value!r}")
    if value < minimum or (maximum is not None and value > maximum):
        bounds = f"at least {minimum}" if maximum is None else f"between {minimum} and {maximum}"
        raise ValueError(f"{name} must be {bounds}, not {value}")
    return int(value)


def default_n_val(n_patients: int) -> int:
    """Validation patients for a dataset: the tutorial's 30 of 110, scaled.

    Args:
        n_patients: number of patients, at least 2 (one for training, one for validation).

    Returns:
        ``round(n_patients * 30 / 110)``, clipped to ``[1, n_patients - 1]``; 30 for 110 patients.

    Raises:
        ValueError: ``n_patients`` is not an integer >= 2.
    """
    if isinstance(n_patients, bool) or not isinstance(n_patients, int | np.integer) or n_patients < 2:
        raise ValueError(
            f"n_patients must be an integer >= 2 (a split needs one training and one validation "
            f"patient), not {n_patients!r}"
        )
    return int(min(max(round(n_patients * TUTORIAL_VAL / TUTORIAL_PATIENTS), 1), n_patients - 1))


def _names(values: Sequence[str], limit: int = 5) -> str:
    shown = ", ".join(values[:limit])
    return shown + (f" and {len(values) - limit} more" if len(values) > limit else "")


def _fix(path: Path) -> str:
    return f"Delete {path} to create a new split, or pass another split file path."


def _load(path: Path, patients: list[str], n_val: int | None) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise SplitError(f"cannot read the split file {path}: {err}. {_fix(path)}") from err
    lists = {}
    for key in ("train", "val"):
        value = data.get(key) if isinstance(data, dict) else None
        if not isinstance(value, list) or not all(isinstance(p, str) for p in value):
            raise SplitError(
                f"the split file {path} is malformed: expected a JSON object with lists of patient "
                f'names under "train" and "val", got {type(value).__name__} for "{key}". {_fix(path)}'
            )
        repeated = sorted({p for p in value if value.count(p) > 1})
        if repeated:
            raise SplitError(f'the split file {path} lists {_names(repeated)} twice in "{key}". {_fix(path)}')
        lists[key] = value
    train, val = set(lists["train"]), set(lists["val"])
    both = sorted(train & val)
    if both:
        raise SplitError(
            f"the split file {path} puts {len(both)} patients in both train and val ({_names(both)}): "
            f"that leaks validation data into training. {_fix(path)}"
        )
    unknown = sorted((train | val) - set(patients))
    if unknown:
        raise SplitError(
            f"the split file {path} names {len(unknown)} patients that are not in the dataset "
            f"({_names(unknown)}); it was made for other data. {_fix(path)}"
        )
    missing = sorted(set(patients) - train - val)
    if missing:
        raise SplitError(
            f"the split file {path} is stale: {len(missing)} patients of the dataset are in neither "
            f"train nor val ({_names(missing)}). {_fix(path)}"
        )
    if not val or not train:
        raise SplitError(f"the split file {path} has an empty train or val list. {_fix(path)}")
    if n_val is not None and n_val != len(val):
        raise SplitError(
            f"n_val is {n_val} but the split file {path} holds {len(val)} validation patients. "
            f"Leave n_val unset to reuse the file, or: {_fix(path)}"
        )
    seed = data.get("seed")
    logger.info(
        "Reusing the split %s: %d train / %d validation patients (seed %s)", path, len(train), len(val), seed
    )
    return {"train": sorted(train), "val": sorted(val), "seed": seed, "n_val": len(val)}


def load_or_create_split(
    patients: Sequence[str], split_file: str | PathLike, n_val: int | None = None, seed: int = 0
) -> dict:
    """Patient split of a dataset: reuse ``split_file`` if it exists, else create and write it.

    A reused file wins over ``seed`` (so later runs keep their validation patients); it is
    refused when it is malformed, puts a patient in both sets, names patients not in the data,
    leaves out patients of the data (stale), or holds a different number of validation patients
    than an explicit ``n_val``.

    Args:
        patients: patient names of the dataset (duplicates are ignored); at least 2.
        split_file: the JSON file ``{"train": [...], "val": [...], "seed": s, "n_val": k}``;
            parent folders are created.
        n_val: validation patients, 1 to ``len(patients) - 1``; default None uses
            :func:`default_n_val` (30 of 110) for a new split and the file's count for a reused one.
        seed: non-negative seed of the shuffle (``numpy.random.default_rng``), default 0.

    Returns:
        ``{"train": [...], "val": [...], "seed": s, "n_val": k}`` with sorted patient lists.

    Raises:
        ValueError: fewer than 2 patients, or ``n_val`` / ``seed`` out of range.
        SplitError: an existing split file is refused (the message says why and how to fix it).
    """
    names = sorted(set(patients))
    if len(names) < 2:
        raise ValueError(
            f"patients must hold at least 2 distinct patients for a train/validation split, got {len(names)}"
        )
    if n_val is not None:
        n_val = _check_int("n_val", n_val, 1, len(names) - 1)
    seed = _check_int("seed", seed, 0)
    path = Path(split_file).expanduser()
    if path.exists():
        return _load(path, names, n_val)
    k = default_n_val(len(names)) if n_val is None else n_val
    order = np.random.default_rng(seed).permutation(len(names))
    val = sorted(names[i] for i in order[:k])
    split = {"train": sorted(set(names) - set(val)), "val": val, "seed": seed, "n_val": k}
    write_json(path, split)
    logger.info(
        "Wrote a new split %s: %d train / %d validation patients (seed %d)", path, len(names) - k, k, seed
    )
    return split
