"""Finding the inputs of inference: kaggle_3m TIFF folders, patient folders of sequences, volumes.

Inputs, all found under ``dataset_dir`` (a folder, searched recursively; a single volume file
is accepted too), in any mix. Every input is segmented as 3 channels in the training order
(pre-contrast T1, FLAIR, post-contrast T1), slice by slice:

- **kaggle_3m TIFF slices**: one folder per patient holding ``<patient>_<k>.tif`` (RGB, channels
  last: pre-contrast T1, FLAIR, post-contrast T1), found by :func:`pipeline.data.discovery.discover`
  without masks (masks present are ignored). The preprocessing is the training one
  (``preprocessing`` of bundle/configs/inference.json,
  :func:`pipeline.inference.workflow.tiff_preprocessing`).
- **Patient folders of separate sequences** (kind "patient", :mod:`pipeline.inference.sequences`):
  one single-channel file (NIfTI, NRRD, MetaImage) or DICOM series per sequence, found by name
  (``*flair*``, ``*t1*``, ``*t1c*``/``*t1ce*``/``*t1gd*``/``*post*``, BraTS and BraTS 2023
  names; configurable with ``sequence_patterns``); a folder is one when at least two of its
  volumes or series have a sequence name. FLAIR's grid is the patient's; the T1s are resampled
  onto it (:mod:`pipeline.inference.sequences_read`); a missing T1 or post-contrast T1 is FLAIR.
- **3-D volumes**: NIfTI (``.nii``, ``.nii.gz``, read with nibabel), NRRD (``.nrrd``, ``.nhdr``),
  MetaImage (``.mha``, ``.mhd``) and DICOM series (a folder holding one series; ITK reads the
  pixels, pydicom the headers). Files whose name ends in ``_mask`` are masks and are ignored.
  Channels: 3 (4-D NIfTI with the channel last, or a vector pixel type in ITK) are (pre-contrast
  T1, FLAIR, post-contrast T1) as they are; 1 channel is FLAIR alone (below).

Decisions:

- Slices are the last voxel axis (k). Slice k is shown to the network as rows = the second voxel
  axis (j), columns = the first (i): for DICOM this is the stored pixel matrix (rows x columns)
  from which the kaggle_3m TIFFs were exported, and ITK and nibabel give the same slice of a file.
  The orientation checks (:mod:`pipeline.inference.orientation`) apply to volumes and to FLAIR.
- Intensities: a sequence that is not 8-bit is windowed (0.5-99.5th percentile of its non-zero
  voxels) onto 0..255 when read (:mod:`pipeline.inference.intensity`).
- **FLAIR alone** (a single-channel volume, or a patient without both T1s) is refused by
  default: the network was trained on three sequences, and a patient segmented at Dice 0.941
  from its three sequences fell to 0.105 from FLAIR alone. ``allow_flair_only=True`` (bundle:
  ``--allow_flair_only true``) segments it, FLAIR copied into the three channels, with a warning.
- **Bad inputs do not stop a batch**: an input that cannot be segmented (unreadable, no FLAIR,
  two FLAIRs, a DICOM folder mixing series, 4-D or wrong channel count, not axial, an empty
  folder, FLAIR alone refused) is returned with ``n_slices`` 0 and ``error`` naming the file or
  folder and the fix, and logged as an error; the run skips it. Only a missing ``dataset_dir``,
  or one holding nothing recognisable, raises DatasetError.
- Finding reads headers only (nibabel headers, ITK image information, DICOM headers up to the
  pixel data; the folder tree by :mod:`pipeline.inference.sequences_scan`):
  :func:`pipeline.inference.volumes.read_volume` reads one input's pixels at a time.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from pipeline.data.discovery import TIFF_SUFFIXES, DatasetError, discover, no_slices_message, scan_dataset
from pipeline.flags import truthy
from pipeline.inference.input_record import EXPECTED_INPUTS, NIFTI_SUFFIXES, InferenceInput
from pipeline.inference.sequences import FLAIR_ONLY, is_patient_folder, patient_input
from pipeline.inference.sequences import sequence_patterns as resolve_patterns
from pipeline.inference.sequences_scan import Folder, candidates_of, scan_tree, volume_suffix
from pipeline.inference.volumes import dicom_input, itk_input, nifti_input

logger = logging.getLogger(__name__)

_PROBLEMS = (ValueError, OSError, RuntimeError, DatasetError)


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


def _error_input(name: str, kind: str, path: Path, message: str) -> InferenceInput:
    logger.error("%s", message)
    return InferenceInput(name, kind, path, 0, error=message)


def _flair_only_policy(inp: InferenceInput, allow_flair_only: bool) -> InferenceInput:
    if inp.error or not inp.flair_only:
        return inp
    what = (
        f"patient folder {inp.path} has FLAIR alone (no pre- or post-contrast T1)"
        if inp.kind == "patient"
        else f"{inp.path} has one channel, taken as FLAIR alone"
    )
    if not allow_flair_only:
        return _error_input(inp.name, inp.kind, inp.path, f"{what}: refused: {FLAIR_ONLY}")
    logger.warning(
        "%s: segmented as allowed (allow_flair_only), but unreliable: %s", what, FLAIR_ONLY.split(". Add")[0]
    )
    return inp


def _guard(name: str, kind: str, path: Path, build) -> InferenceInput:
    try:
        return build()
    except _PROBLEMS as error:
        return _error_input(name, kind, path, str(error))


def _volume(path: Path, name: str) -> InferenceInput:
    kind = "nifti" if volume_suffix(path) in NIFTI_SUFFIXES else "itk"
    return _guard(
        name, kind, path, lambda: nifti_input(path, name) if kind == "nifti" else itk_input(path, name)
    )


def _folder_inputs(
    record: Folder, folders, root: Path, patterns, consumed: set[Path]
) -> list[InferenceInput]:
    here = record.path
    name = here.relative_to(root).as_posix() if here != root else root.name
    candidates = candidates_of(record, folders, patterns)
    inputs = []
    if record.series_error:
        inputs.append(_error_input(name, "dicom", here, record.series_error))
    if is_patient_folder(candidates):
        consumed.update(c.path for c in candidates if c.path.parent == here and c.path.is_dir())
        inputs.append(_guard(name, "patient", here, lambda: patient_input(here, name, candidates, patterns)))
        return inputs
    for path in record.volumes:
        inputs.append(_volume(path, path.relative_to(root).as_posix()))
    series = record.series or []
    if len(series) == 1:
        inputs.append(_guard(name, "dicom", here, lambda: dicom_input(series[0], name)))
    elif len(series) > 1:
        labels = ", ".join(s.label for s in series)
        inputs.append(_error_input(name, "dicom", here, (
            f"DICOM folder {here} holds {len(series)} series ({labels}): expected one series per folder, "
            "or the sequences of one patient named by their SeriesDescription (FLAIR and T1 or "
            f"post-contrast T1; patterns {dict(patterns)}); move each series into a folder of its own, "
            "or set sequence_patterns"
        )))  # fmt: skip
    return inputs


def find_inputs(
    dataset_dir: str | os.PathLike,
    *,
    sequence_patterns: Mapping[str, str | Sequence[str]] | str | None = None,
    allow_flair_only: bool | str = False,
) -> list[InferenceInput]:
    """Everything under ``dataset_dir`` that can be segmented, and what cannot, sorted by name.

    Args:
        dataset_dir: a folder (searched recursively) or a single volume file.
        sequence_patterns: role ("flair", "t1", "t1c", "ignore") -> glob patterns matched
            (case-insensitive) against the names of the sequences of patient folders; the roles
            given replace their defaults (:data:`pipeline.inference.sequences.DEFAULT_SEQUENCE_PATTERNS`).
            A string (as the bundle CLI passes it) is read as a Python/JSON literal.
        allow_flair_only: segment an input that has FLAIR alone (refused by default); the
            strings "true"/"false" of the bundle CLI are accepted.

    Returns:
        The TIFF patients, patient folders and volumes, sorted by :attr:`InferenceInput.name`;
        those that cannot be segmented have ``n_slices`` 0 and ``error`` set (and are logged).

    Raises:
        DatasetError: ``dataset_dir`` is missing, or holds nothing recognisable.
        ValueError: ``sequence_patterns`` names an unknown role or holds a non-string.
    """
    patterns = resolve_patterns(sequence_patterns)
    allow_flair_only = truthy(allow_flair_only)
    root = Path(dataset_dir).expanduser().resolve()
    if not root.exists():
        raise DatasetError(f"input {root} does not exist; {EXPECTED_INPUTS}.")
    if root.is_file():
        if volume_suffix(root) is None:
            raise DatasetError(f"input {root} is not a volume file; {EXPECTED_INPUTS}.")
        return [_flair_only_policy(_volume(root, root.name), allow_flair_only)]
    inputs = _tiff_inputs(root)
    folders = scan_tree(root)
    consumed: set[Path] = set()
    empty = [record.path for record in folders.values() if record.empty and record.path != root]
    for path, record in folders.items():
        if path not in consumed and not record.empty:
            inputs.extend(_folder_inputs(record, folders, root, patterns, consumed))
    if not inputs:
        if any(p.suffix.lower() in TIFF_SUFFIXES for p in root.iterdir()):
            raise DatasetError(no_slices_message(root))
        raise DatasetError(f"input folder {root} holds nothing to segment; {EXPECTED_INPUTS}.")
    for path in empty:
        message = (
            f"folder {path} is empty: nothing to segment; put the patient's scans in it "
            f"({EXPECTED_INPUTS}) or remove it"
        )
        inputs.append(_error_input(path.relative_to(root).as_posix(), "patient", path, message))
    inputs = [_flair_only_policy(inp, allow_flair_only) for inp in inputs]
    inputs.sort(key=lambda inp: inp.name)
    bad = [inp for inp in inputs if inp.error]
    logger.info(
        "Found %d inputs (%d slices) in %s%s",
        len(inputs) - len(bad),
        sum(i.n_slices for i in inputs),
        root,
        f"; {len(bad)} cannot be segmented: {', '.join(i.name for i in bad)}" if bad else "",
    )
    return inputs
