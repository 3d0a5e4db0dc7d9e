"""Reading 3-D volumes for inference: NIfTI (nibabel), NRRD/MetaImage and DICOM series (ITK).

The decisions on volumes (slice axis, orientation, channels) are those of
:mod:`pipeline.inference.inputs`; this module holds the readers.
"""

from __future__ import annotations

import logging
from pathlib import Path

import nibabel as nib
import numpy as np

from pipeline.data.discovery import DatasetError
from pipeline.inference.input_record import CHANNELS, EXPECTED_INPUTS, InferenceInput
from pipeline.inference.orientation import check_axial, itk_directions, nifti_directions

logger = logging.getLogger(__name__)


def _unreadable(path: Path, error: Exception) -> ValueError:
    reason = (str(error).strip().splitlines() or [""])[0]
    return ValueError(
        f"cannot read {path}: {type(error).__name__}: {reason} ({EXPECTED_INPUTS}; is the file complete?)"
    )


def _check_channels(path: Path, channels: int) -> None:
    if channels not in (1, 3):
        raise ValueError(f"{path} has {channels} channels: expected {CHANNELS}")


def nifti_input(path: Path, name: str) -> InferenceInput:
    try:
        image = nib.load(path)
    except Exception as error:
        raise _unreadable(path, error) from error
    shape = image.shape
    if len(shape) == 3:
        channels = 1
    elif len(shape) == 4 or (len(shape) == 5 and shape[3] == 1):
        channels = shape[-1]
    else:
        raise ValueError(f"{path} has shape {shape}: expected a 3-D volume (i, j, k) with {CHANNELS} last")
    _check_channels(path, channels)
    check_axial(path, nifti_directions(image.affine), "nifti")
    # zooms are float32 (0.9 is stored as 0.8999999762): 7 significant digits give back the written value
    spacing = tuple(float(f"{z:.7g}") for z in image.header.get_zooms()[:3])
    return InferenceInput(
        name,
        "nifti",
        path,
        int(shape[2]),
        spacing=spacing,
        geometry={"affine": image.affine, "header": image.header.copy()},
    )


def itk_input(path: Path, name: str, kind: str) -> InferenceInput:
    import itk

    try:
        if kind == "dicom":
            series = itk.GDCMSeriesFileNames.New(Directory=str(path))
            uids = list(series.GetSeriesUIDs())
            if len(uids) != 1:
                raise DatasetError(
                    f"DICOM folder {path} holds {len(uids)} series: expected one series per folder; "
                    "move each series into a folder of its own"
                )
            # a series has no single header: read it once here for its geometry
            image = itk.imread(str(path))
            dims = tuple(image.GetLargestPossibleRegion().GetSize())
            channels = image.GetNumberOfComponentsPerPixel()
            spacing = tuple(float(s) for s in image.GetSpacing())
            origin = tuple(float(o) for o in image.GetOrigin())
            direction = np.asarray(image.GetDirection(), dtype=float)
        else:
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
    except DatasetError:
        raise
    except Exception as error:
        raise _unreadable(path, error) from error
    if len(dims) != 3:
        raise ValueError(f"{path} has {len(dims)} dimensions {dims}: expected a 3-D volume with {CHANNELS}")
    _check_channels(path, channels)
    check_axial(path, itk_directions(direction), kind)
    geometry = {"origin": origin, "spacing": spacing, "direction": direction}
    return InferenceInput(name, kind, path, int(dims[2]), spacing=spacing, geometry=geometry)


def read_volume(inp: InferenceInput) -> np.ndarray:
    """The slices of a volume as float32 (n_slices, 3, J, I): slice k, channels, rows j, columns i.

    Raises:
        ValueError: the file is unreadable or its channel count is not 1 or 3 (naming the file).
    """
    try:
        if inp.kind == "nifti":
            data = np.asarray(nib.load(inp.path).dataobj, dtype=np.float32)
            data = data.reshape(*data.shape[:3], -1)  # (i, j, k, c)
            slices = data.transpose(2, 3, 1, 0)
        else:
            import itk

            image = itk.imread(str(inp.path))
            data = np.asarray(itk.array_view_from_image(image), dtype=np.float32)  # (k, j, i[, c])
            data = data.reshape(*data.shape[:3], -1)
            slices = data.transpose(0, 3, 1, 2)
    except Exception as error:
        raise _unreadable(inp.path, error) from error
    _check_channels(inp.path, slices.shape[1])
    if slices.shape[1] == 1:
        logger.warning("%s has one channel: taken as FLAIR and copied into all three channels", inp.path)
        slices = np.repeat(slices, 3, axis=1)
    return np.ascontiguousarray(slices)
