"""The row of ``lesion_volumes.csv`` of one input, and the post-processing of its mask.

Columns (:data:`CSV_COLUMNS`), one row per input segmented (or kept by ``skip_existing``), sorted
by input name; failed inputs are in ``failures.csv`` instead (:mod:`pipeline.inference.run_summary`):

- ``input``: the input's name (its path relative to ``dataset_dir``; the folder name of a TIFF
  patient); ``n_slices``.
- ``lesion_voxels``: voxels of the mask as written (after ``largest_component`` when on).
- ``lesion_volume_mm3``: voxels times the voxel volume from the spacing (NIfTI zooms, ITK/DICOM
  spacing), rounded to 0.001 mm3; ``lesion_volume_ml``: the same in mL (mm3 / 1000), rounded to
  0.000001 mL. Both empty when the spacing is unknown (TIFF slices carry none: their unit
  spacing is a convention of the written file, not a size).
- ``slices_with_lesion``: slices holding at least one lesion voxel.
- ``largest_component_share``: voxels of the largest 3-D connected component (face connectivity,
  ``scipy.ndimage.label``'s default, as evaluation's ``+lcc``) over all lesion voxels, rounded to
  4 decimals; empty without lesion. Near 1: one lesion; low: scattered specks, worth a look.
- ``substituted``: roles missing from the patient and replaced by FLAIR, ";"-joined (e.g. "t1c").
- ``flair_only``: "true" when FLAIR alone was given (copied into all three channels: the network
  never saw such input, the mask is unreliable), else "false".
- ``uncertainty_disagreement``, ``uncertainty_entropy``, ``uncertainty_flag``: only with
  ``uncertainty`` on (:data:`UNCERTAINTY_COLUMNS`, :mod:`pipeline.inference.uncertainty`): the
  input's uncertainty scores and "true" when the flagged score is above the threshold.
- ``input_files``: the files (or DICOM folders) read: the sequences of a patient in channel order
  (t1, FLAIR, t1c; substituted ones absent), else the input's path; relative to ``dataset_dir``
  when under it, ";"-joined.
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

import numpy as np

from pipeline.atomic import write_text
from pipeline.evaluation.detection import component_sizes
from pipeline.evaluation.metrics import largest_component
from pipeline.inference.input_record import InferenceInput

CSV_COLUMNS = (
    "input",
    "n_slices",
    "lesion_voxels",
    "lesion_volume_mm3",
    "lesion_volume_ml",
    "slices_with_lesion",
    "largest_component_share",
    "substituted",
    "flair_only",
    "input_files",
)
UNCERTAINTY_COLUMNS = ("uncertainty_disagreement", "uncertainty_entropy", "uncertainty_flag")
ROLE_ORDER = ("t1", "flair", "t1c")  # the network's channels


def postprocess(mask_kji: np.ndarray, keep_largest: bool) -> np.ndarray:
    """The mask (uint8 0/1) as written: only its largest 3-D face-connected component when
    ``keep_largest`` (the paper's post-processing, evaluation's ``+lcc``), else as predicted."""
    mask = np.asarray(mask_kji) != 0
    if keep_largest:
        mask = largest_component(mask)
    return mask.astype(np.uint8)


def _relative(path: Path, dataset_dir: Path | None) -> str:
    """``path`` relative to ``dataset_dir``: as found first (a linked patient folder stays under
    ``dataset_dir``), then with links resolved; else as it is."""
    path = Path(path)
    if dataset_dir is not None:
        for inner, outer in (
            (path.absolute(), dataset_dir.resolve()),
            (path.absolute(), dataset_dir.absolute()),
            (path.resolve(), dataset_dir.resolve()),
        ):
            if inner.is_relative_to(outer):
                return inner.relative_to(outer).as_posix()
    return str(path)


def input_files(inp: InferenceInput, dataset_dir: str | os.PathLike | None = None) -> str:
    """The files read for ``inp``, ";"-joined (see the module docstring)."""
    root = None if dataset_dir is None else Path(dataset_dir)
    if inp.sequences:
        roles = [r for r in ROLE_ORDER if r in inp.sequences] + sorted(set(inp.sequences) - set(ROLE_ORDER))
        paths = [inp.sequences[role] for role in roles]
    else:
        paths = [inp.path]
    return ";".join(_relative(path, root) for path in paths)


def lesion_row(
    inp: InferenceInput, mask_kji: np.ndarray, dataset_dir: str | os.PathLike | None = None
) -> dict[str, object]:
    """The ``lesion_volumes.csv`` row of ``inp`` for its written mask (n_slices, rows, columns)."""
    mask = np.asarray(mask_kji) != 0
    voxels = int(mask.sum())
    if inp.spacing is None:
        mm3 = ml = ""
    else:
        volume = voxels * float(np.prod([float(s) for s in inp.spacing[:3]]))
        mm3, ml = repr(round(volume, 3)), repr(round(volume / 1000.0, 6))
    sizes = component_sizes(mask)
    share = repr(round(float(sizes[0]) / voxels, 4)) if voxels else ""
    return {
        "input": inp.name,
        "n_slices": inp.n_slices,
        "lesion_voxels": voxels,
        "lesion_volume_mm3": mm3,
        "lesion_volume_ml": ml,
        "slices_with_lesion": int(mask.reshape(mask.shape[0], -1).any(axis=1).sum()) if mask.size else 0,
        "largest_component_share": share,
        "substituted": ";".join(inp.substituted),
        "flair_only": "true" if inp.flair_only else "false",
        "input_files": input_files(inp, dataset_dir),
    }


def write_csv(path: str | os.PathLike, rows: dict[str, dict]) -> Path:
    """Write ``lesion_volumes.csv`` (atomically): the rows sorted by input name; its path. The
    :data:`UNCERTAINTY_COLUMNS` go before ``input_files`` when a row has them."""
    columns = list(CSV_COLUMNS)
    if any(UNCERTAINTY_COLUMNS[0] in row for row in rows.values()):
        columns[-1:-1] = UNCERTAINTY_COLUMNS
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows[name] for name in sorted(rows))
    return write_text(Path(path), buffer.getvalue())
