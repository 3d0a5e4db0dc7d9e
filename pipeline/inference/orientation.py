"""Slice orientation of 3-D volumes given to inference: axial slices only, no reorientation.

The network segments 2-D slices; a volume's slices are its third voxel axis (k). Decisions:

- **Refused** (ValueError naming the file, the axis codes and the fix): the third voxel axis is
  closer to left-right (sagittal slices) or anterior-posterior (coronal slices) than to
  superior-inferior. "Closer" is the largest component of the axis direction in world space.
- **Accepted**: any axial volume, oblique ones included (a 20 degree tilt is still axial), and in
  either slice order (S->I or I->S): each slice is segmented on its own and its mask goes back to
  the same k.
- **Accepted with a warning**: an axial volume whose in-plane orientation differs from the
  training slices beyond what training augmented. The kaggle_3m slices are the DICOM pixel matrix:
  columns (voxel axis i) run right->left, rows (j) anterior->posterior (anterior at the top), axis
  codes "LP" in nibabel's RAS terms. Training flips slices left-right and rotates them by up to
  15 degrees, so "RP" is as good as "LP"; rows running posterior->anterior (upside down, e.g. "LA"
  or "RA", what dcm2niix and ``nib.as_closest_canonical`` give) or rows and columns swapped
  (rotated by 90 degrees) were never seen in training, and the masks may be worse.
- A direction that cannot be decided (a zero or non-finite column) is accepted with a warning.

Orientation comes from the NIfTI affine (RAS) or the ITK direction matrix (LPS, converted to RAS).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import nibabel as nib
import numpy as np

__all__ = ["check_axial", "itk_directions", "nifti_directions"]

logger = logging.getLogger(__name__)

TRAINING_CODES = "LP"  # columns i toward the patient's left, rows j toward posterior
_AXIS_NAMES = ("left-right", "anterior-posterior", "superior-inferior")
_PLANES = ("sagittal", "coronal", "axial")
_FIX_NIFTI = (
    "img = nib.load(path); img.as_reoriented(nib.orientations.ornt_transform("
    'nib.orientations.io_orientation(img.affine), nib.orientations.axcodes2ornt("LPS")))'
    '.to_filename("axial.nii.gz")'
)
_FIX_ITK = (
    "itk.imwrite(itk.orient_image_filter(itk.imread(path), use_image_direction=True, "
    "desired_coordinate_orientation=itk.SpatialOrientationEnums."
    'ValidCoordinateOrientations_ITK_COORDINATE_ORIENTATION_RAI), "axial.nrrd")'
)


def nifti_directions(affine: np.ndarray) -> np.ndarray:
    """The RAS directions of the voxel axes i, j, k (the columns) of a NIfTI affine."""
    return np.asarray(affine, dtype=float)[:3, :3]


def itk_directions(direction: np.ndarray) -> np.ndarray:
    """The RAS directions of the voxel axes (the columns) of an ITK direction matrix (LPS)."""
    return np.diag([-1.0, -1.0, 1.0]) @ np.asarray(direction, dtype=float)


def _codes(directions: np.ndarray) -> str:
    """nibabel axis codes of the voxel axes, e.g. "LPS" (the direction each axis increases to)."""
    affine = np.eye(4)
    affine[:3, :3] = directions
    return "".join(code or "?" for code in nib.aff2axcodes(affine))


def check_axial(path: Path, directions: np.ndarray, kind: str) -> None:
    """Refuse a volume whose slices (voxel axis k) are not axial; warn on an unusual in-plane layout.

    Args:
        path: the volume, named in messages.
        directions: (3, 3) RAS directions of the voxel axes i, j, k (the columns, any length).
        kind: "nifti" or "itk"/"dicom": which fix to suggest.

    Raises:
        ValueError: the slices are sagittal or coronal.
    """
    lengths = np.linalg.norm(directions, axis=0)
    if not np.all(np.isfinite(directions)) or np.any(lengths == 0):
        logger.warning("%s: orientation unknown (direction %s): slices taken as axial", path, directions.T)
        return
    unit = directions / lengths
    codes = _codes(directions)
    along = [int(np.argmax(np.abs(unit[:, axis]))) for axis in range(3)]
    fix = _FIX_NIFTI if kind == "nifti" else _FIX_ITK
    if along[2] != 2:
        raise ValueError(
            f"{path}: slices are {_PLANES[along[2]]}, not axial: the third voxel axis (k, the slices) "
            f"runs {_AXIS_NAMES[along[2]]} (axis codes {codes!r}); the network segments axial slices. "
            f"Reslice it to axial first, e.g. in Python: {fix}"
        )
    tilt = math.degrees(math.acos(min(1.0, abs(unit[2, 2]))))
    if tilt >= 1:
        logger.info(
            "%s: oblique axial slices (tilted %.0f degrees, axis codes %r): accepted", path, tilt, codes
        )
    if along[:2] == [0, 1]:
        if unit[1, 1] < 0:
            return  # rows run anterior->posterior as in training; left-right either way (augmented)
        layout = "rows run posterior->anterior (slices upside down)"
    else:
        layout = "rows and columns are swapped (slices rotated by 90 degrees or transposed)"
    logger.warning(
        "%s: axial, but %s compared with the training slices (axis codes %r; training: columns "
        "right->left or left->right, rows anterior->posterior, codes 'LP' or 'RP'). The network never "
        "saw this layout: the masks may be worse. To match training, e.g.: %s",
        path,
        layout,
        codes,
        fix,
    )
