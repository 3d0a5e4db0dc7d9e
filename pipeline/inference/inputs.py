"""Finding and reading the inputs of inference: kaggle_3m TIFF patient folders and 3-D volumes.

Inputs, all found under ``dataset_dir`` (a folder, searched recursively; a single volume file
is accepted too), in any mix:

- **kaggle_3m TIFF slices**: one folder per patient holding ``<patient>_<k>.tif`` (RGB: pre-contrast
  T1, FLAIR, post-contrast T1), found by :func:`pipeline.data.discovery.discover` without masks (masks
  present are ignored). The preprocessing is the training one (``preprocessing`` of
  bundle/configs/inference.json, mirrored by :func:`pipeline.inference.workflow.tiff_preprocessing`).
- **3-D volumes**: NIfTI (``.nii``, ``.nii.gz``, read with nibabel), NRRD (``.nrrd``, ``.nhdr``),
  MetaImage (``.mha``, ``.mhd``) and DICOM series (a folder of one series, read with ITK). Files
  whose name ends in ``_mask`` are taken for masks and ignored.

Volumes, decisions:

- Slices are the last voxel axis (k). Slice k is shown to the network as rows = the second voxel
  axis (j), columns = the first (i): for DICOM this is the stored pixel matrix (rows x columns)
  from which the kaggle_3m TIFFs were exported, and ITK and nibabel give the same slice of a file.
- Orientation (:mod:`pipeline.inference.orientation`): no reorientation is done. Slices that are
  not axial are a ValueError naming the file, its axis codes and a one-line reslice; oblique
  axial and either slice order are accepted; an axial volume upside down or with rows and columns
  swapped is segmented with a warning (training flipped slices left-right, never upside down).
- Bad volumes (unreadable, wrong channel count, not axial) are found by :func:`find_inputs`,
  before any mask is written: one bad volume in a folder stops the run with no output written.
- Channels: a 3-channel volume (4-D NIfTI with the channel last, or a vector pixel type in ITK)
  is (pre-contrast T1, FLAIR, post-contrast T1) as is; a single-channel volume is taken as FLAIR
  and copied into the three channels (as the dataset does for missing sequences), with a
  warning; any other channel count is a ValueError naming the file.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from pipeline.data.discovery import TIFF_SUFFIXES, DatasetError, discover, no_slices_message, scan_dataset
from pipeline.inference.input_record import (
    EXPECTED_INPUTS,
    ITK_SUFFIXES,
    NIFTI_SUFFIXES,
    InferenceInput,
)
from pipeline.inference.volumes import itk_input, nifti_input

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


def _volume_suffix(path: Path) -> str | None:
    name = path.name.lower()
    for suffix in (*NIFTI_SUFFIXES, *ITK_SUFFIXES):
        if name.endswith(suffix):
            return suffix
    return None


def _is_dicom(path: Path) -> bool:
    if path.suffix.lower() == ".dcm":
        return True
    if path.suffix.lower() in NOT_DICOM:
        return False
    try:
        with open(path, "rb") as handle:
            return handle.read(132)[128:] == b"DICM"
    except OSError:
        return False


def _tiff_inputs(root: Path) -> list[InferenceInput]:
    _, patients, _ = scan_dataset(root)
    if not any(files.images for files in patients):
        return []
    records = discover(root, require_masks=False)
    by_patient: dict[str, list[Path]] = {}
    for record in records:  # sorted by patient, then slice number
        by_patient.setdefault(record["patient"], []).append(Path(record["image"]))
    return [
        InferenceInput(patient, "tiff", files[0].parent, len(files), slices=tuple(files))
        for patient, files in by_patient.items()
    ]


def find_inputs(dataset_dir: str | os.PathLike) -> list[InferenceInput]:
    """Everything under ``dataset_dir`` that can be segmented, sorted by name.

    Args:
        dataset_dir: a folder (searched recursively) or a single volume file.

    Returns:
        The TIFF patients and the volumes, sorted by :attr:`InferenceInput.name`.

    Raises:
        DatasetError: ``dataset_dir`` is missing, or holds nothing recognisable.
        ValueError: a volume is unreadable, has a channel count other than 1 or 3, or its
            slices are not axial (the message names the file).
    """
    root = Path(dataset_dir).expanduser().resolve()
    if not root.exists():
        raise DatasetError(f"input {root} does not exist; {EXPECTED_INPUTS}.")
    if root.is_file():
        suffix = _volume_suffix(root)
        if suffix is None:
            raise DatasetError(f"input {root} is not a volume file; {EXPECTED_INPUTS}.")
        kind = "nifti" if suffix in NIFTI_SUFFIXES else "itk"
        reader = nifti_input if kind == "nifti" else itk_input
        return [reader(root, root.name) if kind == "nifti" else reader(root, root.name, kind)]
    inputs = _tiff_inputs(root)
    for folder, subfolders, files in os.walk(root):
        subfolders[:] = sorted(d for d in subfolders if not d.startswith((".", "__MACOSX")))
        here = Path(folder)
        dicom = False
        for file in sorted(files):
            path = here / file
            if file.startswith("."):
                continue
            suffix = _volume_suffix(path)
            if suffix is None:
                dicom = dicom or _is_dicom(path)
                continue
            name = path.relative_to(root).as_posix()
            if file[: -len(suffix)].endswith("_mask"):
                logger.info("Ignoring %s: a mask, not a scan", path)
            elif suffix in NIFTI_SUFFIXES:
                inputs.append(nifti_input(path, name))
            else:
                inputs.append(itk_input(path, name, "itk"))
        if dicom:
            name = here.relative_to(root).as_posix() if here != root else root.name
            inputs.append(itk_input(here, name, "dicom"))
    if not inputs:
        if any(p.suffix.lower() in TIFF_SUFFIXES for p in root.iterdir()):
            raise DatasetError(no_slices_message(root))
        raise DatasetError(f"input folder {root} holds nothing to segment; {EXPECTED_INPUTS}.")
    inputs.sort(key=lambda inp: inp.name)
    logger.info("Found %d inputs (%d slices) in %s", len(inputs), sum(i.n_slices for i in inputs), root)
    return inputs
