"""Validate a dataset folder in the kaggle_3m layout: ``python -m pipeline check-data DIR``.

Every file is read once with tifffile and checked against the data contract (docs/data.md):
RGB uint8 slices, single-channel uint8 masks holding only 0 and 255, image and mask of one
size (divisible by 16, the U-Net's four poolings), one file per slice number, at least two
slices per patient. Faults make training refuse to start; warnings (numbering gaps, no lesion
anywhere, odd file names) are only reported.
"""

from __future__ import annotations

import argparse
import logging
from collections import Counter
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path

import numpy as np
import tifffile

from pipeline.data.discovery import DatasetError, PatientFiles, no_slices_message, scan_dataset

__all__ = ["DatasetReport", "add_arguments", "check_dataset", "main"]

logger = logging.getLogger(__name__)

DIVISOR = 16  # 2**4: the depth-5 U-Net pools four times
EXPECTED_SIZE = (256, 256)


@dataclass
class DatasetReport:
    """What :func:`check_dataset` found.

    Attributes:
        dataset_dir: the dataset folder, resolved.
        n_patients: patient folders found (a duplicate copy counted once).
        n_slices: images found.
        n_lesion_slices: readable masks with at least one nonzero pixel.
        faults: ``(path, problem)`` pairs that make the dataset unusable.
        warnings: messages (each naming its path) about things that may be intended.
    """

    dataset_dir: str
    n_patients: int = 0
    n_slices: int = 0
    n_lesion_slices: int = 0
    faults: list[tuple[str, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when there is no fault (warnings allowed)."""
        return not self.faults

    def format(self, max_faults: int = 20) -> str:
        """A short human report: counts, faults (at most ``max_faults``, default 20), warnings."""
        lines = [
            f"Dataset {self.dataset_dir}: {self.n_patients} patients, {self.n_slices} slices "
            f"({self.n_lesion_slices} with lesion)"
        ]
        if self.faults:
            lines.append(f"{len(self.faults)} faults:")
            lines += [f"  {self._short(path)}: {problem}" for path, problem in self.faults[:max_faults]]
            if len(self.faults) > max_faults:
                kinds = Counter(
                    problem.split(":")[0].split(";")[0].split(" (")[0] for _, problem in self.faults
                )
                common = ", ".join(f"{n}x {kind}" for kind, n in kinds.most_common(3))
                lines.append(f"  ... and {len(self.faults) - max_faults} more (most common: {common})")
        if self.warnings:
            lines.append(f"{len(self.warnings)} warnings:")
            lines += [f"  {warning}" for warning in self.warnings]
        lines.append(
            "OK"
            if self.ok
            else f"NOT OK: fix the faults above, then rerun: python -m pipeline check-data {self.dataset_dir}"
        )
        return "\n".join(lines)

    def _short(self, path: str) -> str:
        root = Path(self.dataset_dir)
        inside = Path(path).is_relative_to(root) and Path(path) != root
        return str(Path(path).relative_to(root)) if inside else path


def _read(path: Path) -> tuple[np.ndarray | None, str, str | None]:
    """(array, axes, None) or (None, "", problem)."""
    try:
        with tifffile.TiffFile(path) as tif:
            page = tif.pages.first
            return page.asarray(), page.axes, None
    except PermissionError:
        return None, "", "not readable: permission denied (fix with `chmod u+r` on the file)"
    except Exception as err:  # tifffile raises ValueError, IndexError, struct.error, ... on damaged files
        return (
            None,
            "",
            (
                f"unreadable TIFF: {type(err).__name__}: {err} "
                "(the file is truncated or not a TIFF; re-export or re-download it)"
            ),
        )


def _spatial(array: np.ndarray, axes: str) -> tuple[tuple[int, ...], int]:
    """(height, width) and channel count from tifffile's axes (``S`` marks samples)."""
    channels = array.shape[axes.index("S")] if "S" in axes else 1
    shape = tuple(n for axis, n in zip(axes, array.shape) if axis != "S")
    return shape, channels


def _check_image(path: Path, report: DatasetReport) -> tuple[int, ...] | None:
    array, axes, problem = _read(path)
    if problem:
        report.faults.append((str(path), problem))
        return None
    shape, channels = _spatial(array, axes)
    if channels != 3:
        kind = "grayscale" if channels == 1 else f"{channels}-channel"
        report.faults.append(
            (
                str(path),
                f"image has {channels} channel(s) ({kind}); expected 3 (RGB: pre-contrast T1, "
                "FLAIR, post-contrast T1)",
            )
        )
    if array.dtype != np.uint8:
        report.faults.append((str(path), f"image dtype is {array.dtype}; expected uint8"))
    return shape


def _check_mask(path: Path, report: DatasetReport) -> tuple[tuple[int, ...] | None, bool]:
    array, axes, problem = _read(path)
    if problem:
        report.faults.append((str(path), problem))
        return None, False
    shape, channels = _spatial(array, axes)
    if channels != 1 or len(shape) != 2:
        report.faults.append(
            (str(path), f"mask has shape {array.shape} ({channels} channel(s)); expected one channel (H x W)")
        )
    if array.dtype != np.uint8:
        report.faults.append(
            (str(path), f"mask dtype is {array.dtype}; expected uint8 with values 0 and 255")
        )
    bad = (array != 0) & (array != 255)
    if bad.any():
        values = np.unique(array[bad])
        shown = ", ".join(str(v) for v in values[:5]) + (", ..." if values.size > 5 else "")
        report.faults.append((str(path), f"mask is not binary: values other than 0 and 255 ({shown})"))
    return shape, bool(array.any())


def _check_shapes(image: Path, shape: tuple, mask_shape: tuple | None, report: DatasetReport) -> None:
    if len(shape) != 2:
        report.faults.append((str(image), f"image has {len(shape)} spatial dimensions {shape}; expected 2"))
        return
    if mask_shape is not None and mask_shape[:2] != shape:
        report.faults.append(
            (
                str(image),
                f"size mismatch: image is {shape[0]}x{shape[1]}, its mask "
                f"{mask_shape[0]}x{mask_shape[-1]}; expected the same size",
            )
        )
    if shape[0] % DIVISOR or shape[1] % DIVISOR:
        report.faults.append(
            (
                str(image),
                f"image size {shape[0]}x{shape[1]} is not divisible by {DIVISOR} "
                "(the U-Net pools four times); crop or pad it (256x256 in the kaggle_3m data)",
            )
        )


def _check_patient(files: PatientFiles, report: DatasetReport, sizes: Counter) -> None:
    folder = files.folder
    for path in files.unnamed:
        report.warnings.append(f"{path}: ignored, no _<k> slice number in its name")
    for stem in sorted(files.masks.keys() - files.images.keys()):
        report.faults.append((str(files.masks[stem]), f"mask without image (expected {stem}.tif beside it)"))
    by_slice: dict[int, list[Path]] = {}
    for stem, image in sorted(files.images.items(), key=lambda item: PatientFiles.slice_of(item[0])):
        by_slice.setdefault(PatientFiles.slice_of(stem), []).append(image)
        if not stem.startswith(files.patient):
            report.warnings.append(f"{image}: name does not start with its folder name {files.patient}")
        shape = _check_image(image, report)
        mask = files.masks.get(stem)
        mask_shape = None
        if mask is None:
            report.faults.append((str(image), f"image without mask (expected {stem}_mask.tif beside it)"))
        else:
            mask_shape, lesion = _check_mask(mask, report)
            report.n_lesion_slices += lesion
        if shape is not None:
            _check_shapes(image, shape, mask_shape, report)
            if len(shape) == 2:
                sizes[shape] += 1
    report.n_slices += len(files.images)
    for k, paths in sorted(by_slice.items()):
        if len(paths) > 1:
            names = ", ".join(p.name for p in sorted(paths))
            report.faults.append(
                (str(folder), f"duplicated slice number {k}: {names}; keep one file per slice")
            )
    if len(by_slice) == 1:
        report.faults.append(
            (str(folder), "patient folder holds a single slice; a volume needs at least 2 (kaggle_3m: 20-88)")
        )
    if by_slice:
        gaps = sorted(set(range(1, max(by_slice) + 1)) - set(by_slice))
        if gaps:
            shown = ", ".join(map(str, gaps[:10])) + (", ..." if len(gaps) > 10 else "")
            report.warnings.append(f"{folder}: slice numbers missing ({shown}); volumes will have gaps")


def check_dataset(dataset_dir: str | PathLike) -> DatasetReport:
    """Check every file of a kaggle_3m dataset folder against the data contract.

    Args:
        dataset_dir: the kaggle_3m folder, or the Kaggle archive root holding it (the nested
            duplicate copy is checked once).

    Returns:
        The report; ``report.ok`` is False when there is any fault. A missing or empty folder,
        or one without patient folders, is a fault, not an exception.
    """
    try:
        root, patients, _ = scan_dataset(dataset_dir)
    except DatasetError as err:
        path = str(Path(dataset_dir).expanduser().resolve())
        return DatasetReport(dataset_dir=path, faults=[(path, str(err))])
    report = DatasetReport(dataset_dir=str(root), n_patients=len(patients))
    sizes: Counter = Counter()
    n_masks = sum(len(files.masks) for files in patients)
    for files in patients:
        _check_patient(files, report, sizes)
    if report.n_slices == 0:
        report.faults.append((str(root), no_slices_message(root)))
        return report
    if len(sizes) > 1:
        shown = ", ".join(f"{n} slices of {h}x{w}" for (h, w), n in sizes.most_common(5))
        report.warnings.append(
            f"{root}: slices differ in size ({shown}); training resizes them to image_size"
        )
    elif sizes and next(iter(sizes)) != EXPECTED_SIZE:
        h, w = next(iter(sizes))
        report.warnings.append(f"{root}: slices are {h}x{w}, not 256x256 as in the kaggle_3m data")
    if report.n_lesion_slices == 0 and n_masks:
        report.warnings.append(f"{root}: no mask has a lesion (all are empty); nothing to learn from")
    return report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the ``check-data`` command's arguments on ``parser``."""
    parser.add_argument("dataset_dir", type=Path, help="kaggle_3m folder (or the Kaggle archive root)")
    parser.add_argument(
        "--max-faults", type=int, default=50, help="faults to print before summarising (default 50)"
    )


def main(args: argparse.Namespace) -> int:
    """Run ``python -m pipeline check-data DIR``: print the report; exit 0 when ok, 1 on faults."""
    report = check_dataset(args.dataset_dir)
    print(report.format(max_faults=args.max_faults))
    return 0 if report.ok else 1
