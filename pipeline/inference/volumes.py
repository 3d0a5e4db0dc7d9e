"""Reading 3-D volumes for inference: NIfTI (nibabel), NRRD/MetaImage and DICOM series (ITK).

The decisions on volumes (slice axis, orientation, channels) are those of
:mod:`pipeline.inference.inputs`; this module holds the readers. The ``*_input`` functions read
headers only (no pixel data) and raise ValueError naming the file and the fix;
:func:`read_volume` reads the pixels of one input, windowed onto the 8-bit range of the training
slices (:mod:`pipeline.inference.intensity`, per channel). Patient folders of separate
sequences are read by :mod:`pipeline.inference.sequences_read`.
"""

from __future__ import annotations

import logging
from pathlib import Path

import nibabel as nib
import numpy as np

from pipeline.inference.dicom_series import DicomSeries
from pipeline.inference.input_record import CHANNELS, InferenceInput
from pipeline.inference.intensity import window_to_8bit
from pipeline.inference.orientation import check_axial, itk_directions, nifti_directions
from pipeline.inference.sequences_read import read_itk, read_patient, unreadable

logger = logging.getLogger(__name__)


def _check_channels(path: Path, channels: int) -> None:
    if channels not in (1, 3):
        raise ValueError(f"{path} has {channels} channels: expected {CHANNELS}")


def nifti_header(path: Path):
    """The nibabel image of ``path`` (header and affine; pixel data not read) and its channels.

    Raises:
        ValueError: unreadable, or not 3-D (optionally with channels last), naming the file.
    """
    try:
        image = nib.load(path)
    except Exception as error:
        raise unreadable(path, error) from error
    shape = image.shape
    if len(shape) == 3:
        channels = 1
    elif len(shape) == 4 or (len(shape) == 5 and shape[3] == 1):
        channels = shape[-1]
    else:
        raise ValueError(f"{path} has shape {shape}: expected a 3-D volume (i, j, k) with {CHANNELS} last")
    return image, int(channels)


def itk_header(path: Path) -> tuple[tuple[int, ...], int, dict]:
    """Dimensions, channels and geometry (origin, spacing, direction) of an NRRD/MetaImage file.

    Raises:
        ValueError: unreadable, or not 3-D, naming the file.
    """
    import itk

    try:
        reader = itk.ImageIOFactory.CreateImageIO(str(path), itk.CommonEnums.IOFileMode_ReadMode)
        if reader is None:
            raise ValueError("no ITK reader recognises it")
        reader.SetFileName(str(path))
        reader.ReadImageInformation()
        n = reader.GetNumberOfDimensions()
        dims = tuple(reader.GetDimensions(i) for i in range(n))
        channels = reader.GetNumberOfComponents()
        spacing = tuple(float(reader.GetSpacing(i)) for i in range(n))
        origin = tuple(float(reader.GetOrigin(i)) for i in range(n))
        direction = np.array([reader.GetDirection(i) for i in range(n)], dtype=float).T
    except Exception as error:
        raise unreadable(path, error) from error
    if len(dims) != 3:
        raise ValueError(f"{path} has {len(dims)} dimensions {dims}: expected a 3-D volume with {CHANNELS}")
    return dims, int(channels), {"origin": origin, "spacing": spacing, "direction": direction}


def nifti_input(path: Path, name: str) -> InferenceInput:
    image, channels = nifti_header(path)
    _check_channels(path, channels)
    check_axial(path, nifti_directions(image.affine), "nifti")
    # zooms are float32 (0.9 is stored as 0.8999999762): 7 significant digits give back the written value
    spacing = tuple(float(f"{z:.7g}") for z in image.header.get_zooms()[:3])
    return InferenceInput(
        name,
        "nifti",
        path,
        int(image.shape[2]),
        spacing=spacing,
        geometry={"affine": image.affine, "header": image.header.copy()},
        flair_only=channels == 1,
    )


def itk_input(path: Path, name: str, kind: str = "itk") -> InferenceInput:
    dims, channels, geometry = itk_header(path)
    _check_channels(path, channels)
    check_axial(path, itk_directions(geometry["direction"]), kind)
    return InferenceInput(
        name,
        kind,
        path,
        int(dims[2]),
        spacing=geometry["spacing"],
        geometry=geometry,
        flair_only=channels == 1,
    )


def series_geometry(series: DicomSeries) -> dict:
    """The ITK geometry (origin, spacing, direction) of a checked DICOM series."""
    return {"origin": series.origin, "spacing": series.spacing, "direction": np.array(series.direction)}


def dicom_input(series: DicomSeries, name: str) -> InferenceInput:
    """A DICOM series (its headers, see :mod:`pipeline.inference.dicom_series`) as one input."""
    if series.error:
        raise ValueError(series.error)
    _check_channels(series.folder, series.channels)
    check_axial(series.folder, itk_directions(series.direction), "dicom")
    return InferenceInput(
        name,
        "dicom",
        series.folder,
        series.n_slices,
        spacing=series.spacing,
        geometry=series_geometry(series),
        flair_only=series.channels == 1,
        dicom_files=series.files,
    )


def read_volume(inp: InferenceInput) -> np.ndarray:
    """The slices of an input as float32 (n_slices, 3, J, I): slice k, channels, rows j, columns i.

    Channels are (pre-contrast T1, FLAIR, post-contrast T1), each windowed onto 0..255 when not
    already 8-bit (:mod:`pipeline.inference.intensity`); a single channel is FLAIR, copied into
    all three. A patient folder is read by :func:`pipeline.inference.sequences_read.read_patient`.

    Raises:
        ValueError: the file is unreadable or its channel count is not 1 or 3 (naming the file),
            or ``inp`` is an error input.
    """
    if inp.error:
        raise ValueError(inp.error)
    if inp.kind == "patient":
        return read_patient(inp)
    try:
        if inp.kind == "nifti":
            image = nib.load(inp.path)
            proxy = image.dataobj
            scaled = getattr(proxy, "slope", 1.0) != 1.0 or getattr(proxy, "inter", 0.0) != 0.0
            stored = np.dtype(np.float32) if scaled else image.get_data_dtype()
            data = np.asarray(proxy)
            data = data.reshape(*data.shape[:3], -1)  # (i, j, k, c)
            slices = data.transpose(2, 3, 1, 0)
        else:
            import itk

            itk_image, stored = read_itk(inp.path, inp.dicom_files)
            data = itk.array_view_from_image(itk_image)  # (k, j, i[, c])
            slices = data.reshape(*data.shape[:3], -1).transpose(0, 3, 1, 2)
    except Exception as error:
        raise unreadable(inp.path, error) from error
    _check_channels(inp.path, slices.shape[1])
    windowed = np.empty(slices.shape, np.float32)
    for channel in range(slices.shape[1]):
        windowed[:, channel] = window_to_8bit(slices[:, channel], stored)
    if windowed.shape[1] == 1:
        logger.warning("%s has one channel: taken as FLAIR and copied into all three channels", inp.path)
        windowed = np.repeat(windowed, 3, axis=1)
    return np.ascontiguousarray(windowed)
