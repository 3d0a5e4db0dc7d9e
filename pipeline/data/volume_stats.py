"""Per-patient intensity bounds for train.json's ``intensity: "volume"`` option.

For each patient (a volume of k slices, 3 channels) and each channel: the 1st and 99th
percentile of that channel over the patient's *head voxels*, all slices together. A voxel is
head when its brightest channel exceeds 10% of the volume's reference brightness, the 99.9th
percentile of the brightest channel over all voxels. ``transforms.ScaleIntensityByRecordd`` then
clips each channel to its ``[lo, hi]`` and scales it to [0, 1], the same mapping on every slice.

Why these numbers:

- Per volume and per channel, clipped at a high percentile and scaled to [0, 1]: Buda et al.'s
  PyTorch code (brain-segmentation-pytorch, ``normalize_volume``) clips each volume at its 10th and
  99th percentile; the paper's MATLAB preprocessing (``preprocessing3D.m``) works per volume and per
  sequence too. Per volume, a slice without lesion is no longer stretched until its brightest
  tissue looks like a lesion.
- Percentiles of the head, not of the whole volume: the background (half or more of a slice, and
  all of the outermost slices) would otherwise decide the lower bound, and its share varies
  between patients. 10% of the brightness is the background threshold of the same PyTorch code
  (``crop_sample``); the reference is the 99.9th percentile rather than the maximum so that a few
  hot voxels of an artefact cannot raise the threshold above the tissue.
- 99th, not the maximum: a handful of bright voxels (vessels, flow artefacts) would otherwise set
  the scale of the whole volume. 1st, not the minimum, likewise at the dark end.

The same function serves training (:func:`patient_bounds`, from the TIFF files, cached beside the
split file) and inference (:func:`volume_bounds` of a volume in memory): both give the same
float64 numbers for the same voxels.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pipeline import atomic
from transforms.reader import read_tiff

__all__ = [
    "HEAD_FRACTION",
    "bundle_datalist",
    "METHOD",
    "PERCENTILES",
    "intensity_file",
    "patient_bounds",
    "per_patient",
    "read_tiff_volume",
    "tiff_bounds",
    "volume_bounds",
]

logger = logging.getLogger(__name__)

HEAD_FRACTION = 0.1
REFERENCE_PERCENTILE = 99.9
PERCENTILES = (1.0, 99.0)
METHOD = {
    "head_fraction": HEAD_FRACTION,
    "reference_percentile": REFERENCE_PERCENTILE,
    "percentiles": list(PERCENTILES),
}
_VERSION = 1


def volume_bounds(slices: np.ndarray) -> list[list[float]]:
    """Per-channel ``[lo, hi]`` of a volume: the 1st and 99th percentile of its head voxels.

    Args:
        slices: the volume as (k, C, H, W) (slice, channel, rows, columns), any numeric dtype,
            e.g. what ``pipeline.inference.volumes.read_volume`` returns.

    Returns:
        C pairs ``[lo, hi]`` of Python floats. A volume without any voxel above the threshold
        (blank) takes all its voxels.

    Raises:
        ValueError: ``slices`` is not four-dimensional or is empty.
    """
    volume = np.asarray(slices)
    if volume.ndim != 4 or volume.size == 0:
        raise ValueError(
            f"volume_bounds needs a volume of shape (slices, channels, rows, columns), got {volume.shape}"
        )
    brightest = volume.max(axis=1)  # (k, H, W)
    reference = np.percentile(brightest.astype(np.float64), REFERENCE_PERCENTILE)
    head = brightest > HEAD_FRACTION * reference
    if not head.any():
        head = np.ones_like(head)
    bounds = []
    for c in range(volume.shape[1]):
        values = volume[:, c][head].astype(np.float64)
        lo, hi = np.percentile(values, PERCENTILES)
        bounds.append([float(lo), float(hi)])
    return bounds


def read_tiff_volume(paths: Sequence[str | os.PathLike]) -> np.ndarray:
    """The RGB TIFF slices of one patient, in the order given, as (k, 3, H, W) in their stored dtype.

    Raises:
        ValueError: a file is unreadable, not RGB (H, W, 3), or of another size than the first.
    """
    arrays = []
    for path in paths:
        array, _ = read_tiff(path)
        if array.ndim != 3 or array.shape[-1] != 3:
            raise ValueError(
                f"{path}: image of shape {array.shape}; per-volume intensity bounds need RGB slices "
                "(rows, columns, 3: pre-contrast T1, FLAIR, post-contrast T1)"
            )
        if arrays and array.shape != arrays[0].shape:
            raise ValueError(f"{path}: shape {array.shape}, the patient's first slice {arrays[0].shape}")
        arrays.append(array)
    if not arrays:
        raise ValueError("read_tiff_volume needs at least one slice")
    return np.moveaxis(np.stack(arrays), -1, 1)


def tiff_bounds(paths: Sequence[str | os.PathLike]) -> list[list[float]]:
    """:func:`volume_bounds` of one patient's TIFF slices (training, and inference on TIFF folders)."""
    return volume_bounds(read_tiff_volume(paths))


def bundle_datalist(dataset_dir: str | os.PathLike, intensity: str = "slice") -> list[dict]:
    """Records ``{"image": file}`` of every slice under ``dataset_dir`` (``**/*.tif`` but the masks,
    sorted), for a bundle that reads TIFF folders; with ``intensity`` "volume" each record also gets
    ``"intensity"``, the :func:`tiff_bounds` of its folder (one folder is one patient).

    Raises:
        ValueError: ``intensity`` is not "slice" or "volume", or a slice is unreadable or not RGB.
    """
    from transforms.intensity import intensity_option

    intensity = intensity_option(intensity)
    files = sorted(str(p) for p in Path(dataset_dir).glob("**/*.tif") if not p.stem.endswith("_mask"))
    records = [{"image": f} for f in files]
    if intensity == "volume":
        folders: dict[str, list[str]] = {}
        for f in files:
            folders.setdefault(str(Path(f).parent), []).append(f)
        bounds = {folder: tiff_bounds(paths) for folder, paths in folders.items()}
        for record in records:
            record["intensity"] = [list(pair) for pair in bounds[str(Path(record["image"]).parent)]]
    return records


def intensity_file(split_file: str | os.PathLike) -> Path:
    """The cache of the per-patient bounds, beside the split file: ``<split>.intensity.json``."""
    split = Path(split_file)
    return split.with_name(f"{split.stem}.intensity.json")


def _files_digest(paths: Sequence[str]) -> str:
    """sha256 of each image's name, size and modification time: a file rewritten in place changes it."""
    lines = []
    for path in sorted(paths):
        stat = os.stat(path)
        lines.append(f"{Path(path).parent.name}/{Path(path).name}\t{stat.st_size}\t{stat.st_mtime_ns}")
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:16]


def _read_cache(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def patient_bounds(records: Sequence[dict], cache_file: str | os.PathLike, fingerprint: str) -> dict:
    """The :func:`tiff_bounds` of every patient of ``records``, computed once and cached.

    The cache (a small JSON, ``cache_file``) is reused when it was written for the same dataset
    fingerprint, the same files (names, sizes, modification times) and the same method; else the
    bounds are computed again and the file rewritten (atomically). Delete it to force a rerun.

    Args:
        records: datalist records ``{"image", "patient", "slice", ...}``.
        cache_file: where the bounds are cached (:func:`intensity_file` of the split file).
        fingerprint: the dataset fingerprint (``pipeline.data.discovery.fingerprint``).

    Returns:
        ``{patient: [[lo, hi], [lo, hi], [lo, hi]]}``.
    """
    return per_patient(
        records, cache_file, fingerprint, tiff_bounds, METHOD, _VERSION, "Intensity: per-volume bounds"
    )


def per_patient(
    records: Sequence[dict],
    cache_file: str | os.PathLike,
    fingerprint: str,
    compute: Callable[[list[str]], Any],
    method: dict,
    version: int,
    what: str,
) -> dict:
    """``compute(paths)`` of every patient of ``records`` (its slice files in slice order), cached.

    The cache pattern of :func:`patient_bounds`, shared with :mod:`pipeline.data.head_box`: the JSON
    ``cache_file`` is reused when it was written for the same ``version``, dataset ``fingerprint``,
    files (names, sizes, modification times), ``method`` and patients; else every patient is
    computed again and the file rewritten atomically. ``what`` names the values in the log line.

    Returns:
        ``{patient: compute(paths)}`` (as JSON gives it back when read from the cache).
    """
    by_patient: dict[str, list[tuple[int, str]]] = {}
    for record in records:
        by_patient.setdefault(record["patient"], []).append((record["slice"], record["image"]))
    key = {
        "version": version,
        "fingerprint": fingerprint,
        "files": _files_digest([r["image"] for r in records]),
        "method": method,
    }
    cache = Path(cache_file)
    cached = _read_cache(cache)
    patients = cached.get("patients")
    if (
        {k: cached.get(k) for k in key} == key
        and isinstance(patients, dict)
        and set(patients) == set(by_patient)
    ):
        logger.info("%s of %d patients read from %s", what, len(patients), cache)
        return patients
    start = time.perf_counter()
    patients = {
        patient: compute([path for _, path in sorted(slices)])
        for patient, slices in sorted(by_patient.items())
    }
    atomic.write_json(cache, {**key, "patients": patients})
    logger.info(
        "%s of %d patients computed in %.1f s, cached in %s",
        what,
        len(patients),
        time.perf_counter() - start,
        cache,
    )
    return patients
