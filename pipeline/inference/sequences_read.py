"""Reading the pixels of a sequence, and of a patient folder of sequences onto FLAIR's grid.

A patient (:mod:`pipeline.inference.sequences`) is read one at a time by :func:`read_patient`:

- each sequence is read as stored (NIfTI with nibabel; NRRD, MetaImage and DICOM series with
  ITK, a series from its files in slice order) and windowed onto 0..255 on its own when not
  already 8-bit (:mod:`pipeline.inference.intensity`), **before** resampling;
- FLAIR is the reference: its voxels are used as they are, and its slices are the patient's
  slices (slice k, rows j, columns i, exactly as a single FLAIR volume of the same file is read);
- the pre- and post-contrast T1 are resampled onto FLAIR's grid with ITK's ResampleImageFilter,
  linear interpolation, identity transform, using each image's physical geometry (origin,
  spacing, direction in LPS; a NIfTI's from its nibabel affine, the one its mask is written
  with). Voxels of FLAIR's grid outside a sequence's field of view get 0 (background); a
  sequence covering less than half of FLAIR's grid is logged as a warning (another session or
  frame of reference?);
- a missing T1 or post-contrast T1 (:attr:`InferenceInput.substituted`) is FLAIR again, as the
  training data do for the patients that lack a sequence.

Output: float32 (n_slices, 3, J, I) with channels (pre-contrast T1, FLAIR, post-contrast T1).
"""

from __future__ import annotations

import logging
from pathlib import Path

import nibabel as nib
import numpy as np

from pipeline.inference.input_record import EXPECTED_INPUTS, NIFTI_SUFFIXES, InferenceInput
from pipeline.inference.intensity import window_to_8bit

logger = logging.getLogger(__name__)

CHANNEL_ROLES = ("t1", "flair", "t1c")  # the network's channel order
_LPS = np.diag([-1.0, -1.0, 1.0])
_OUTSIDE = -1.0  # resampled value outside a sequence: windowed values are never negative
MIN_COVERAGE = 0.5


def unreadable(path: Path, error: Exception) -> ValueError:
    """The error of a file no reader can open, naming it."""
    reason = (str(error).strip().splitlines() or [""])[0]
    return ValueError(
        f"cannot read {path}: {type(error).__name__}: {reason} ({EXPECTED_INPUTS}; is the file complete?)"
    )


_ITK_TYPES = {
    "unsigned_char": np.uint8,
    "char": np.int8,
    "unsigned_short": np.uint16,
    "short": np.int16,
    "unsigned_int": np.uint32,
    "int": np.int32,
    "unsigned_long": np.uint64,
    "long": np.int64,
    "unsigned_long_long": np.uint64,
    "long_long": np.int64,
    "float": np.float32,
    "double": np.float64,
}


def read_itk(path: Path, files: tuple[Path, ...] = ()):
    """An ITK image and the numpy type its pixels are stored in: a NRRD/MetaImage file (read as
    float32, 3 components as a float vector), or a DICOM series from its ``files`` in slice order
    (ITK takes the geometry from this order; GDCM's pixel type), or a folder of one series."""
    import itk

    if files or path.is_dir():
        names = [str(f) for f in files] if len(files) > 1 else str(files[0] if files else path)
        image = itk.imread(names)
        return image, itk.array_view_from_image(image).dtype
    io = itk.ImageIOFactory.CreateImageIO(str(path), itk.CommonEnums.IOFileMode_ReadMode)
    if io is None:
        raise ValueError("no ITK reader recognises it")
    io.SetFileName(str(path))
    io.ReadImageInformation()
    stored = np.dtype(_ITK_TYPES.get(io.GetComponentTypeAsString(io.GetComponentType()), np.float32))
    components = io.GetNumberOfComponents()
    pixel = itk.F if components == 1 else itk.Vector[itk.F, components]
    return itk.imread(str(path), pixel), stored


def nifti_lps_geometry(affine: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...], np.ndarray]:
    """Origin, spacing and direction (LPS, ITK's convention) of a NIfTI affine (RAS)."""
    affine = np.asarray(affine, dtype=float)
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    direction = _LPS @ affine[:3, :3] / spacing
    return tuple(_LPS @ affine[:3, 3]), tuple(spacing), direction


def _itk_image(array_kji: np.ndarray, origin, spacing, direction):
    import itk

    image = itk.image_from_array(np.ascontiguousarray(array_kji, dtype=np.float32))
    image.SetOrigin([float(v) for v in origin])
    image.SetSpacing([float(v) for v in spacing])
    image.SetDirection(itk.matrix_from_array(np.ascontiguousarray(direction, dtype=float)))
    return image


def read_sequence(path: Path, files: tuple[Path, ...] = ()):
    """One single-channel sequence, windowed: (float32 (k, j, i) array, ITK image of it).

    Raises:
        ValueError: unreadable or not a single-channel 3-D volume, naming the file.
    """
    try:
        if not files and path.name.lower().endswith(NIFTI_SUFFIXES):
            image = nib.load(path)
            proxy = image.dataobj
            scaled = getattr(proxy, "slope", 1.0) != 1.0 or getattr(proxy, "inter", 0.0) != 0.0
            stored = np.dtype(np.float32) if scaled else image.get_data_dtype()
            data = np.asarray(proxy)
            if data.ndim > 3 and all(n == 1 for n in data.shape[3:]):
                data = data.reshape(data.shape[:3])
            array, geometry = data.transpose(2, 1, 0), nifti_lps_geometry(image.affine)
        else:
            import itk

            source, stored = read_itk(path, files)
            array = itk.array_view_from_image(source)
            geometry = (source.GetOrigin(), source.GetSpacing(), np.asarray(source.GetDirection()))
    except Exception as error:
        raise unreadable(path, error) from error
    if array.ndim != 3:
        raise ValueError(f"{path} has array shape {array.shape}: a sequence must be one channel, 3-D")
    windowed = window_to_8bit(array, stored)
    return windowed, _itk_image(windowed, *geometry)


def resample_onto(moving, reference) -> tuple[np.ndarray, float]:
    """``moving`` on ``reference``'s grid (linear interpolation, physical geometry), as a
    (k, j, i) array with 0 outside ``moving``; and the share of the grid ``moving`` covers."""
    import itk

    resampled = itk.resample_image_filter(
        moving,
        reference_image=reference,
        use_reference_image=True,
        interpolator=itk.LinearInterpolateImageFunction.New(moving),
        default_pixel_value=_OUTSIDE,
    )
    array = itk.array_from_image(resampled)
    outside = array == _OUTSIDE
    array[outside] = 0.0
    return array, 1.0 - float(outside.mean()) if array.size else 0.0


def read_patient(inp: InferenceInput) -> np.ndarray:
    """The slices of a patient folder, float32 (n_slices, 3, J, I); see the module docstring.

    Raises:
        ValueError: a sequence is unreadable, or FLAIR's slices disagree with its header.
    """
    flair, reference = read_sequence(inp.sequences["flair"], inp.sequence_files.get("flair", ()))
    if flair.shape[0] != inp.n_slices:
        raise ValueError(
            f"{inp.sequences['flair']}: read {flair.shape[0]} slices, its header says {inp.n_slices}"
        )
    channels = []
    for role in CHANNEL_ROLES:
        if role == "flair" or role not in inp.sequences:
            channels.append(flair)
            continue
        _, image = read_sequence(inp.sequences[role], inp.sequence_files.get(role, ()))
        array, covered = resample_onto(image, reference)
        if covered < MIN_COVERAGE:
            logger.warning(
                "%s: %s (%s) covers only %.0f%% of FLAIR's field of view after resampling: is it from "
                "the same session and frame of reference as FLAIR?",
                inp.path,
                role,
                inp.sequences[role],
                100 * covered,
            )
        channels.append(array)
    return np.ascontiguousarray(np.stack(channels, axis=1), dtype=np.float32)
