"""Data discovery for the kaggle_3m layout (docs/data.md).

A dataset is one folder per patient (``TCGA_CS_4941_19960909/``) holding slices
``<patient>_<k>.tif`` and masks ``<patient>_<k>_mask.tif``. Images and masks are paired by
file stem and ordered by slice number, never by sorting two listings and zipping them (which
pairs ``_10_mask`` with ``_1``). The Kaggle archive nests a duplicate copy under
``lgg-mri-segmentation/kaggle_3m/``: each patient folder is taken once, the shallowest copy first.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path

__all__ = [
    "DatasetError",
    "PatientFiles",
    "discover",
    "fingerprint",
    "no_slices_message",
    "parse_slice_path",
    "scan_dataset",
]

logger = logging.getLogger(__name__)

TIFF_SUFFIXES = (".tif", ".tiff")
MASK_SUFFIX = "_mask"
# the archive root holds kaggle_3m/ and lgg-mri-segmentation/kaggle_3m/: patients sit 2-3 levels down
_MAX_DEPTH = 3
_SLICE_STEM = re.compile(r"^(?P<prefix>.+)_(?P<slice>\d+)$")
LAYOUT_HINT = (
    "expected the kaggle_3m layout: one folder per patient (e.g. TCGA_CS_4941_19960909/) holding "
    "slices TCGA_CS_4941_19960909_<k>.tif and masks TCGA_CS_4941_19960909_<k>_mask.tif"
)


class DatasetError(ValueError):
    """A problem with the user's data; the message names the path and says how to fix it."""


@dataclass
class PatientFiles:
    """The TIFF files of one patient folder, keyed by image stem (``<patient>_<k>``).

    Attributes:
        patient: the folder name, e.g. ``TCGA_CS_4941_19960909``.
        folder: the patient folder.
        images: image stem -> image file.
        masks: image stem (the mask's stem without ``_mask``) -> mask file.
        unnamed: .tif files whose name has no ``_<k>`` slice number.
    """

    patient: str
    folder: Path
    images: dict[str, Path] = field(default_factory=dict)
    masks: dict[str, Path] = field(default_factory=dict)
    unnamed: list[Path] = field(default_factory=list)

    @staticmethod
    def slice_of(stem: str) -> int:
        """Slice number of an image stem that :meth:`scan` accepted."""
        return int(_SLICE_STEM.match(stem)["slice"])

    @classmethod
    def scan(cls, folder: Path) -> PatientFiles:
        """List the slice and mask files of ``folder`` (hidden and non-TIFF files are ignored)."""
        found = cls(patient=folder.name, folder=folder)
        for entry in sorted(os.scandir(folder), key=lambda e: e.name):
            path = Path(entry.path)
            if entry.name.startswith(".") or path.suffix.lower() not in TIFF_SUFFIXES or entry.is_dir():
                continue
            stem = path.stem
            is_mask = stem.endswith(MASK_SUFFIX)
            if is_mask:
                stem = stem[: -len(MASK_SUFFIX)]
            if not _SLICE_STEM.match(stem):
                found.unnamed.append(path)
            else:
                (found.masks if is_mask else found.images)[stem] = path
        return found


def _has_tiff(folder: Path) -> bool:
    try:
        entries = list(os.scandir(folder))
    except PermissionError:
        return False
    return any(
        not e.name.startswith(".") and Path(e.name).suffix.lower() in TIFF_SUFFIXES and e.is_file()
        for e in entries
    )


def no_slices_message(root: Path) -> str:
    """Why ``root`` holds no slices, and what layout was expected."""
    if _has_tiff(root):
        return (
            f"dataset folder {root} holds .tif files directly instead of patient folders; "
            f"point dataset_dir at the folder that holds the patient folders ({LAYOUT_HINT})."
        )
    return f"dataset folder {root} holds no slices; {LAYOUT_HINT}."


def _subfolders(folder: Path) -> list[Path]:
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except PermissionError:
        logger.warning("Skipping %s: permission denied", folder)
        return []
    return [Path(e.path) for e in entries if e.is_dir() and not e.name.startswith((".", "__MACOSX"))]


def scan_dataset(dataset_dir: str | PathLike) -> tuple[Path, list[PatientFiles], list[Path]]:
    """Find the patient folders of a dataset without judging their content.

    Args:
        dataset_dir: the kaggle_3m folder, or the Kaggle archive root holding it.

    Returns:
        The resolved root, the patient folders (each name once, the shallowest copy, sorted by
        name) and the duplicate folders that were skipped.

    Raises:
        DatasetError: ``dataset_dir`` does not exist or is not a folder.
    """
    root = Path(dataset_dir).expanduser().resolve()
    if not root.exists():
        raise DatasetError(f"dataset folder {root} does not exist; {LAYOUT_HINT}.")
    if not root.is_dir():
        raise DatasetError(f"dataset folder {root} is not a folder; {LAYOUT_HINT}.")
    chosen: dict[str, Path] = {}
    duplicates: list[Path] = []
    level = _subfolders(root)
    for _ in range(_MAX_DEPTH):  # breadth first, so the top-level copy of a patient wins
        deeper = []
        for folder in level:
            if not _has_tiff(folder):
                deeper.extend(_subfolders(folder))
            elif folder.name in chosen:
                duplicates.append(folder)
            else:
                chosen[folder.name] = folder
        level = deeper
    if duplicates:
        logger.info("Ignored %d duplicate patient folders (e.g. %s)", len(duplicates), duplicates[0])
    patients = [PatientFiles.scan(chosen[name]) for name in sorted(chosen)]
    return root, patients, duplicates


def _listing(paths: list[Path], limit: int = 5) -> str:
    shown = ", ".join(str(p) for p in paths[:limit])
    return shown + (f" and {len(paths) - limit} more" if len(paths) > limit else "")


def discover(dataset_dir: str | PathLike, require_masks: bool = True) -> list[dict]:
    """Datalist of a dataset folder in the kaggle_3m layout.

    Args:
        dataset_dir: the kaggle_3m folder, or the Kaggle archive root that also holds the nested
            duplicate ``lgg-mri-segmentation/kaggle_3m/`` (each patient is taken once).
        require_masks: default True: every image needs its mask and every mask its image.
            False (inference on scans without masks): ``label`` is None where no mask exists.

    Returns:
        Records ``{"image": str, "label": str | None, "patient": str, "slice": int}`` sorted by
        patient, then slice number.

    Raises:
        DatasetError: the folder is missing, not a folder or holds no slices; a patient has two
            files with the same slice number; or, with ``require_masks``, an image lacks its mask
            or a mask its image.
    """
    root, patients, _ = scan_dataset(dataset_dir)
    records: list[dict] = []
    no_mask: list[Path] = []
    no_image: list[Path] = []
    for files in patients:
        if files.unnamed:
            logger.warning("Ignoring .tif files without a _<k> slice number: %s", _listing(files.unnamed))
        no_image += [files.masks[s] for s in sorted(files.masks.keys() - files.images.keys())]
        seen: dict[int, Path] = {}
        for stem, image in files.images.items():
            k = PatientFiles.slice_of(stem)
            if k in seen:
                raise DatasetError(
                    f"{image} and {seen[k]} are both slice {k} of {files.patient}; "
                    "remove or renumber one of them (one file per slice number)."
                )
            seen[k] = image
            label = files.masks.get(stem)
            if label is None and require_masks:
                no_mask.append(image)
            records.append(
                {
                    "image": str(image),
                    "label": None if label is None else str(label),
                    "patient": files.patient,
                    "slice": k,
                }
            )
    if not records:
        raise DatasetError(no_slices_message(root))
    if require_masks and (no_mask or no_image):
        problems = []
        if no_mask:
            problems.append(f"{len(no_mask)} images without a mask (<stem>_mask.tif): {_listing(no_mask)}")
        if no_image:
            problems.append(f"{len(no_image)} masks without an image: {_listing(no_image)}")
        raise DatasetError(
            f"dataset folder {root} is incomplete: {'; '.join(problems)}. Add the missing files or "
            "remove the orphans (`python -m pipeline check-data DIR` lists every problem)."
        )
    if no_image:
        logger.warning("Ignoring %d masks without an image: %s", len(no_image), _listing(no_image))
    records.sort(key=lambda r: (r["patient"], r["slice"]))
    logger.info("Found %d slices of %d patients in %s", len(records), len(patients), root)
    return records


def parse_slice_path(path: str | PathLike) -> tuple[str, int]:
    """Patient folder name and slice number of a slice (or mask) file.

    Args:
        path: e.g. ``.../TCGA_CS_4941_19960909/TCGA_CS_4941_19960909_12.tif``.

    Returns:
        ``("TCGA_CS_4941_19960909", 12)``.

    Raises:
        DatasetError: the file name does not end in ``_<k>.tif`` (or ``_<k>_mask.tif``).
    """
    p = Path(path)
    stem = p.stem.removesuffix(MASK_SUFFIX)
    match = _SLICE_STEM.match(stem)
    if match is None or p.suffix.lower() not in TIFF_SUFFIXES:
        raise DatasetError(
            f"cannot read a slice number from {p}: expected <patient folder>/<patient>_<k>.tif, "
            "e.g. TCGA_CS_4941_19960909/TCGA_CS_4941_19960909_12.tif"
        )
    return p.parent.name, int(match["slice"])


def fingerprint(records: list[dict]) -> str:
    """Short sha256 (16 hex digits) of a datalist's files, relative to the dataset root.

    Only ``<patient folder>/<file name>`` enters the hash, so moving or renaming the dataset
    folder (or pointing at the archive root instead of kaggle_3m) keeps the fingerprint.

    Args:
        records: records from :func:`discover`.

    Returns:
        16 lowercase hex digits.
    """
    names = set()
    for record in records:
        for key in ("image", "label"):
            if record.get(key) is not None:
                p = Path(record[key])
                names.add(f"{p.parent.name}/{p.name}")
    return hashlib.sha256("\n".join(sorted(names)).encode()).hexdigest()[:16]
