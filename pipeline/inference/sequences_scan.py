"""The folder tree under ``dataset_dir``: each folder's volume files, DICOM series and the
candidates of a patient folder (:mod:`pipeline.inference.sequences`), headers only.

Volume files are recognised by their suffix (:data:`NIFTI_SUFFIXES`, :data:`ITK_SUFFIXES`),
DICOM files by a ``.dcm`` suffix or the ``DICM`` signature at byte 128 (scanners often write no
suffix); files ending in ``_mask`` before the suffix are masks and are skipped. A folder's DICOM
headers are read once (:func:`pipeline.inference.dicom_series.scan_dicom_folder`), when first needed.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.data.discovery import TIFF_SUFFIXES
from pipeline.inference.dicom_series import DicomSeries, scan_dicom_folder
from pipeline.inference.input_record import ITK_SUFFIXES, NIFTI_SUFFIXES
from pipeline.inference.sequences import Candidate, role_of

logger = logging.getLogger(__name__)

# files never opened to look for the DICOM magic number (DICOM files often have no suffix at all)
NOT_DICOM = {
    *TIFF_SUFFIXES,
    ".csv",
    ".txt",
    ".json",
    ".md",
    ".png",
    ".jpg",
    ".jpeg",
    ".gz",
    ".zip",
    ".pt",
    ".xml",
}


def volume_suffix(path: Path) -> str | None:
    name = path.name.lower()
    for suffix in (*NIFTI_SUFFIXES, *ITK_SUFFIXES):
        if name.endswith(suffix):
            return suffix
    return None


def is_dicom(path: Path) -> bool:
    if path.suffix.lower() == ".dcm":
        return True
    if path.suffix.lower() in NOT_DICOM:
        return False
    try:
        with open(path, "rb") as handle:
            return handle.read(132)[128:] == b"DICM"
    except OSError:
        return False


@dataclass
class Folder:
    path: Path
    volumes: list[Path] = field(default_factory=list)
    dicom: list[Path] = field(default_factory=list)
    children: list[Path] = field(default_factory=list)
    empty: bool = False
    series: list[DicomSeries] | None = None  # scanned on first use
    series_error: str = ""


def scan_tree(root: Path) -> dict[Path, Folder]:
    """Every folder under ``root`` (top-down), with its volume files, DICOM files and subfolders.

    Symbolic links to folders are followed (a dataset of linked patient folders is common), each
    real folder once, so a link back up the tree cannot loop.
    """
    folders: dict[Path, Folder] = {}
    seen: set[str] = set()
    for folder, subfolders, files in os.walk(root, followlinks=True):
        seen.add(os.path.realpath(folder))
        subfolders[:] = sorted(
            d
            for d in subfolders
            if not d.startswith((".", "__MACOSX")) and os.path.realpath(os.path.join(folder, d)) not in seen
        )
        here = Path(folder)
        record = Folder(here, children=[here / d for d in subfolders])
        visible = [f for f in sorted(files) if not f.startswith(".")]
        record.empty = not visible and not subfolders
        for file in visible:
            path = here / file
            suffix = volume_suffix(path)
            if suffix is None:
                if is_dicom(path):
                    record.dicom.append(path)
            elif file[: -len(suffix)].endswith("_mask"):
                logger.info("Ignoring %s: a mask, not a scan", path)
            else:
                record.volumes.append(path)
        folders[here] = record
    return folders


def folder_series(record: Folder) -> list[DicomSeries]:
    if record.series is None:
        try:
            record.series = scan_dicom_folder(record.path, record.dicom) if record.dicom else []
        except ValueError as error:
            record.series, record.series_error = [], str(error)
    return record.series


def candidates_of(record: Folder, folders: dict[Path, Folder], patterns) -> list[Candidate]:
    """The volume files, the DICOM series among the files and the one-series subfolders of ``record``."""
    found = []
    for path in record.volumes:
        suffix = volume_suffix(path)
        kind = "nifti" if suffix in NIFTI_SUFFIXES else "itk"
        found.append(Candidate((path.name[: -len(suffix)],), path, kind))
    series = folder_series(record)
    for one in series:
        path = record.path if len(series) == 1 and not record.volumes else one.files[0]
        found.append(Candidate((one.description,), path, "dicom", one))
    for candidate in found:
        candidate.role = role_of(candidate.names, patterns)
    for child in record.children:
        sub = folders[child]
        if not sub.dicom or sub.volumes or sub.children:
            continue
        series = folder_series(sub)
        if len(series) == 1:
            candidate = Candidate((child.name, series[0].description), child, "dicom", series[0])
            candidate.role = role_of(candidate.names, patterns)
            found.append(candidate)
        elif role_of([child.name], patterns) not in (None, "ignore"):
            # a folder named as a sequence but not one series: the patient's error names it
            labels = ", ".join(s.label for s in series)
            error = sub.series_error or (
                f"sequence folder {child} holds {len(series)} DICOM series ({labels}): a sequence "
                "folder holds one series; move the other series into folders of their own"
            )
            found.append(
                Candidate((child.name,), child, "dicom", role=role_of([child.name], patterns), error=error)
            )
    return found
