"""Real MR DICOM series written with pydicom, for the tests of DICOM inputs and outputs.

:func:`write_dicom_series` writes one MR Image Storage file per slice (Explicit VR Little Endian,
128-byte preamble and file meta) with the tags a scanner writes and that ITK's GDCM reader,
pydicom and highdicom need. Geometry, in DICOM's patient coordinates (LPS, mm):

- the array is ``volume_kji[k, j, i]``: slice k, row j, column i, as the kaggle_3m slices and
  as ``itk.array_from_image`` gives a series back;
- ``spacing = (sx, sy, sz)``: sx between columns (along i), sy between rows (along j), sz between
  slices; PixelSpacing is written as DICOM orders it, ``[sy, sx]`` (row spacing first);
- ``orientation`` (ImageOrientationPatient): the direction of increasing column index i, then of
  increasing row index j. The default ``(1, 0, 0, 0, 1, 0)`` is the kaggle_3m layout: columns run
  right->left (+x, toward the patient's left), rows anterior->posterior (+y), slices along their
  cross product (+z, inferior->superior);
- slice k sits at ``origin + k * sz * normal`` (ImagePositionPatient, SliceLocation).

Test modules import from here, never from each other.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian, MRImageStorage, generate_uid

__all__ = ["MR_IMAGE_STORAGE", "slice_normal", "write_dicom_series"]

MR_IMAGE_STORAGE = MRImageStorage  # 1.2.840.10008.5.1.4.1.1.4


def slice_normal(orientation: Sequence[float]) -> np.ndarray:
    """The slice direction (LPS) of an ImageOrientationPatient: column direction x row direction."""
    row_dir = np.asarray(orientation[:3], dtype=float)  # along a row: increasing column index i
    col_dir = np.asarray(orientation[3:], dtype=float)  # along a column: increasing row index j
    return np.cross(row_dir, col_dir)


def _ds(value: float) -> str:
    """A DICOM decimal string (at most 16 characters)."""
    text = f"{value:.6g}"
    return text if len(text) <= 16 else f"{value:.8e}"[:16]


def write_dicom_series(
    folder: str | Path,
    volume_kji: np.ndarray,
    spacing: Sequence[float] = (0.8, 0.8, 2.5),
    origin: Sequence[float] = (-100.0, -120.0, -30.0),
    description: str = "AX FLAIR",
    series_uid: str | None = None,
    study_uid: str | None = None,
    patient_id: str = "PHANTOM01",
    modality: str = "MR",
    bits: int = 16,
    *,
    series_number: int = 1,
    orientation: Sequence[float] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0),
    frame_of_reference_uid: str | None = None,
    patient_name: str = "Phantom^Brain",
    signed: bool = False,
    name_pattern: str = "IM{k:04d}",
    instance_order: Sequence[int] | None = None,
) -> list[Path]:
    """Write ``volume_kji`` as a DICOM series, one file per slice; return the files in slice order k.

    Args:
        folder: created if missing; may already hold other series (e.g. the same patient's T1).
        volume_kji: (slices k, rows j, columns i) integer-valued array; values must fit ``bits``
            (and the sign): they are stored as they are, no rescaling (no RescaleSlope).
        spacing: (sx, sy, sz) in mm: columns, rows, slices.
        origin: ImagePositionPatient of slice 0 (the centre of its first pixel), LPS mm.
        description: SeriesDescription (what sequence matching reads), e.g. "AX T1 POST GD".
        series_uid, study_uid, frame_of_reference_uid: generated when None. Give the same
            study_uid and frame_of_reference_uid to the sequences of one patient.
        patient_id: PatientID.
        modality: Modality.
        bits: 8 (BitsAllocated 8), 12 (12 stored in 16 allocated, as most MR) or 16.
        series_number: SeriesNumber.
        orientation: ImageOrientationPatient (see the module docstring).
        patient_name: PatientName.
        signed: PixelRepresentation 1 (int16) instead of 0 (unsigned); 12 and 16 bits only.
        name_pattern: file name of slice k (``.format(k=k)``); the default has no suffix, as
            scanners often write.
        instance_order: InstanceNumber - 1 of each slice k (default k): lets a test write a series
            whose numbering disagrees with its geometry.

    Returns:
        The files written, in slice order k (slice k's file at index k).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    volume = np.asarray(volume_kji)
    if volume.ndim != 3:
        raise ValueError(f"volume_kji must be (k, j, i), got shape {volume.shape}")
    if bits not in (8, 12, 16) or (signed and bits == 8):
        raise ValueError(f"bits must be 8 (unsigned), 12 or 16, not {bits} (signed={signed})")
    allocated = 8 if bits == 8 else 16
    dtype = np.dtype(np.uint8 if bits == 8 else (np.int16 if signed else np.uint16))
    low, high = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    if volume.size and (volume.min() < low or volume.max() > high or not np.all(volume == np.round(volume))):
        raise ValueError(f"values {volume.min()}..{volume.max()} do not fit {bits}-bit integers")
    pixels = volume.astype(dtype)
    study_uid = study_uid or generate_uid()
    series_uid = series_uid or generate_uid()
    frame_uid = frame_of_reference_uid or generate_uid()
    sx, sy, sz = (float(s) for s in spacing)
    normal = slice_normal(orientation)
    order = list(range(len(volume))) if instance_order is None else list(instance_order)
    now = datetime.datetime(2024, 1, 15, 10, 30, 0)
    paths = []
    for k, plane in enumerate(pixels):
        position = np.asarray(origin, dtype=float) + k * sz * normal
        sop_uid = generate_uid()
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = MR_IMAGE_STORAGE
        meta.MediaStorageSOPInstanceUID = sop_uid
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        ds = Dataset()
        ds.file_meta = meta
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "ND"]
        ds.SOPClassUID = MR_IMAGE_STORAGE
        ds.SOPInstanceUID = sop_uid
        ds.StudyDate = ds.SeriesDate = ds.ContentDate = ds.AcquisitionDate = now.strftime("%Y%m%d")
        ds.StudyTime = ds.SeriesTime = ds.ContentTime = ds.AcquisitionTime = now.strftime("%H%M%S")
        ds.AccessionNumber = "ACC0001"
        ds.Modality = modality
        ds.Manufacturer = "PHANTOM"
        ds.InstitutionName = "Test"
        ds.ReferringPhysicianName = ""
        ds.StudyDescription = "BRAIN"
        ds.SeriesDescription = description
        ds.PatientName = patient_name
        ds.PatientID = patient_id
        ds.PatientBirthDate = "19700101"
        ds.PatientSex = "O"
        ds.BodyPartExamined = "BRAIN"
        ds.ScanningSequence = "SE"
        ds.SequenceVariant = "NONE"
        ds.ScanOptions = ""
        ds.MRAcquisitionType = "2D"
        ds.SliceThickness = _ds(sz)
        ds.SpacingBetweenSlices = _ds(sz)
        ds.RepetitionTime = "9000"
        ds.EchoTime = "120"
        ds.MagneticFieldStrength = "1.5"
        ds.PatientPosition = "HFS"
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.StudyID = "1"
        ds.SeriesNumber = series_number
        ds.AcquisitionNumber = 1
        ds.InstanceNumber = order[k] + 1
        ds.ImagePositionPatient = [_ds(v) for v in position]
        ds.ImageOrientationPatient = [_ds(v) for v in orientation]
        ds.FrameOfReferenceUID = frame_uid
        ds.PositionReferenceIndicator = ""
        ds.SliceLocation = _ds(float(position @ normal))
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = plane.shape
        ds.PixelSpacing = [_ds(sy), _ds(sx)]
        ds.BitsAllocated = allocated
        ds.BitsStored = bits
        ds.HighBit = bits - 1
        ds.PixelRepresentation = 1 if signed else 0
        window_low, window_high = (float(pixels.min()), float(pixels.max())) if pixels.size else (0.0, 1.0)
        ds.WindowCenter = _ds((window_low + window_high) / 2)
        ds.WindowWidth = _ds(max(window_high - window_low, 1.0))
        ds.PixelData = np.ascontiguousarray(plane).tobytes()
        path = folder / name_pattern.format(k=k)
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths
