"""DICOM series from their headers alone (pydicom, no pixel data): split, ordered and checked.

A folder's DICOM files are read with pydicom up to their pixel data, whose value is not read
(``defer_size``): finding the inputs of a 100-patient folder reads headers only. Decisions:

- **Series**: files are grouped by SeriesInstanceUID; one folder may hold several series (the
  sequences of one patient, as scanners export them; :mod:`pipeline.inference.sequences`).
  Files that are not images (no Rows or no Pixel Data: DICOMDIR, structured reports,
  presentation states) are ignored. A file with the DICOM signature that pydicom cannot parse
  makes the whole folder an error (its series cannot be told).
- **Slice order k**: ascending position of ImagePositionPatient along the slice normal
  (ImageOrientationPatient's row direction x column direction), as ITK's GDCM series reader
  orders them; ties by InstanceNumber. ``files`` are in that order, and pixel data is read by ITK
  from exactly that list (:mod:`pipeline.inference.volumes`).
- **Geometry** (LPS, as ITK): origin = the first slice's ImagePositionPatient; spacing = (column
  spacing, row spacing, slice gap) with PixelSpacing read as (row, column); the slice gap is the
  median distance between consecutive slices (one slice: SpacingBetweenSlices, else
  SliceThickness, else 1); direction columns = row direction (voxel axis i), column direction (j),
  normal (k).
- **Refused** (the series gets ``error``, naming the folder or file and the fix): slices without
  ImagePositionPatient / ImageOrientationPatient / PixelSpacing; several orientations or matrix
  sizes in one series (a localizer or several acquisitions sharing a SeriesInstanceUID); two
  slices at one position; slice gaps differing by more than 5 % from their median (a missing
  slice, or mixed acquisitions); multi-frame files (enhanced MR: convert them, e.g. dcm2niix);
  pixel data cut short (the file is smaller than its Pixel Data element says).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

GAP_TOLERANCE = 0.05  # relative deviation of a slice gap from the median gap
_UNDEFINED_LENGTH = 0xFFFFFFFF
_CONVERT = "convert it to NIfTI (e.g. dcm2niix -z y -o OUT FOLDER) or export the series again"


@dataclass
class DicomSeries:
    """One DICOM series as its headers describe it.

    Attributes:
        uid: SeriesInstanceUID ("" when the files have none).
        description: SeriesDescription, else ProtocolName, else "".
        number: SeriesNumber, None when absent.
        folder: the folder holding its files.
        files: its image files in slice order k.
        origin, spacing, direction: its geometry (see the module docstring); direction is a
            (3, 3) LPS matrix whose columns are the voxel axes i, j, k.
        rows, columns, channels: Rows, Columns, SamplesPerPixel.
        error: why it cannot be read as a volume ("" when it can).
    """

    uid: str
    description: str
    number: int | None
    folder: Path
    files: tuple[Path, ...]
    origin: tuple[float, ...] = (0.0, 0.0, 0.0)
    spacing: tuple[float, ...] = (1.0, 1.0, 1.0)
    direction: np.ndarray | None = None
    rows: int = 0
    columns: int = 0
    channels: int = 1
    error: str = ""

    @property
    def n_slices(self) -> int:
        return len(self.files)

    @property
    def label(self) -> str:
        """How messages name it: its description, else its number, else its UID."""
        if self.description:
            return repr(self.description)
        return f"series {self.number}" if self.number is not None else f"series {self.uid or '(no UID)'}"


def _floats(ds, keyword: str) -> list[float] | None:
    value = ds.get(keyword)
    if value is None or value == "":
        return None
    try:
        return [float(v) for v in (value if isinstance(value, Sequence | np.ndarray) else [value])]
    except (TypeError, ValueError):
        return None


def _read_header(path: Path):
    """The header of ``path`` (pixel data not read), None when it is not an image."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(path, defer_size=1024)
    except InvalidDicomError:
        if path.suffix.lower() != ".dcm":
            return None
        ds = pydicom.dcmread(path, defer_size=1024, force=True)
    if "Rows" not in ds or "PixelData" not in ds:
        logger.info("Ignoring %s: a DICOM file without an image (SOP class %s)", path, ds.get("SOPClassUID"))
        return None
    return ds


def _truncated(path: Path, ds) -> bool:
    element = ds.get_item("PixelData", keep_deferred=True)
    tell, length = getattr(element, "value_tell", None), getattr(element, "length", None)
    if tell is None or length is None or length == _UNDEFINED_LENGTH:
        return False
    return tell + length > os.path.getsize(path)


def _series(folder: Path, uid: str, members: list[tuple[Path, object]]) -> DicomSeries:
    first = members[0][1]
    number = first.get("SeriesNumber")
    series = DicomSeries(
        uid=uid,
        description=str(first.get("SeriesDescription") or first.get("ProtocolName") or "").strip(),
        number=int(number) if number not in (None, "") else None,
        folder=folder,
        files=tuple(path for path, _ in members),
    )
    where = f"DICOM series {series.label} in {folder}"
    for path, ds in members:
        frames = int(ds.get("NumberOfFrames") or 1)
        if frames > 1:
            series.error = (
                f"{path} is a multi-frame DICOM ({frames} frames, e.g. enhanced MR): "
                f"not supported; {_CONVERT}"
            )
            return series
        if _truncated(path, ds):
            series.error = f"{path}: its pixel data is cut short (the file is incomplete); copy or {_CONVERT}"
            return series
        missing = [
            k
            for k in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing")
            if not _floats(ds, k)
        ]
        if missing:
            series.error = (
                f"{path} lacks {', '.join(missing)}: the slice geometry of {where} is unknown; {_CONVERT}"
            )
            return series
    orientations = np.array([_floats(ds, "ImageOrientationPatient")[:6] for _, ds in members])
    sizes = {(int(ds.Rows), int(ds.Columns)) for _, ds in members}
    if np.abs(orientations - orientations[0]).max() > 1e-3 or len(sizes) > 1:
        series.error = (
            f"{where} mixes {len({tuple(np.round(o, 3)) for o in orientations})} orientations and "
            f"{len(sizes)} matrix sizes {sorted(sizes)} (a localizer or several acquisitions share its "
            "SeriesInstanceUID): move each acquisition into a folder of its own, or export the series again"
        )
        return series
    row_dir, col_dir = orientations[0][:3], orientations[0][3:]
    normal = np.cross(row_dir, col_dir)
    positions = np.array([_floats(ds, "ImagePositionPatient")[:3] for _, ds in members])
    instance = [int(ds.get("InstanceNumber") or 0) for _, ds in members]
    along = positions @ normal
    order = sorted(range(len(members)), key=lambda n: (along[n], instance[n]))
    along = along[order]
    gaps = np.diff(along)
    pixel = _floats(first, "PixelSpacing")
    if len(gaps) and gaps.min() < 1e-3 * max(pixel[0], 1e-3):
        at = float(along[int(np.argmin(gaps))])
        series.error = (
            f"{where} has two slices at one position ({at:.2f} mm along the slice normal): it mixes "
            "acquisitions; move each into a folder of its own, or export the series again"
        )
        return series
    if len(gaps):
        gap = float(np.median(gaps))
        if np.abs(gaps - gap).max() > GAP_TOLERANCE * gap:
            series.error = (
                f"{where}: slice gaps are not uniform ({gaps.min():.3g} to {gaps.max():.3g} mm): a slice "
                f"is missing or the series mixes acquisitions; {_CONVERT}"
            )
            return series
    else:
        gap = next(
            (v[0] for k in ("SpacingBetweenSlices", "SliceThickness") if (v := _floats(first, k))), 1.0
        )
    series.files = tuple(members[n][0] for n in order)
    series.origin = tuple(float(v) for v in positions[order[0]])
    series.spacing = (float(pixel[1]), float(pixel[0]), float(gap))
    series.direction = np.column_stack([row_dir, col_dir, normal])
    series.rows, series.columns = sizes.pop()
    series.channels = int(first.get("SamplesPerPixel") or 1)
    return series


def scan_dicom_folder(folder: Path, files: Sequence[Path]) -> list[DicomSeries]:
    """The series of the DICOM ``files`` directly in ``folder``, sorted by SeriesNumber then label.

    Raises:
        ValueError: a file with the DICOM signature (or a .dcm name) cannot be parsed; the message
            names it.
    """
    groups: dict[str, list[tuple[Path, object]]] = {}
    for path in sorted(files):
        try:
            ds = _read_header(path)
        except Exception as error:
            reason = (str(error).strip().splitlines() or [""])[0]
            raise ValueError(
                f"cannot read DICOM file {path}: {type(error).__name__}: {reason}; remove it from "
                f"{folder} or copy it again (is it complete?)"
            ) from error
        if ds is not None:
            groups.setdefault(str(ds.get("SeriesInstanceUID") or ""), []).append((path, ds))
    found = [_series(folder, uid, members) for uid, members in groups.items()]
    return sorted(found, key=lambda s: (s.number is None, s.number or 0, s.description, s.uid))
