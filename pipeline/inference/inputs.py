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
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np

from pipeline.data.discovery import TIFF_SUFFIXES, DatasetError, discover, no_slices_message, scan_dataset
from pipeline.inference.orientation import check_axial, itk_directions, nifti_directions

logger = logging.getLogger(__name__)

NIFTI_SUFFIXES = (".nii", ".nii.gz")
ITK_SUFFIXES = {".nrrd": ".nrrd", ".nhdr": ".nrrd", ".mha": ".mha", ".mhd": ".mha"}
CHANNELS = "3 channels (pre-contrast T1, FLAIR, post-contrast T1) or 1 channel (FLAIR)"
EXPECTED_INPUTS = (
    "expected patient folders of kaggle_3m TIFF slices (<patient>/<patient>_<k>.tif), 3-D volumes "
    "(.nii, .nii.gz, .nrrd, .nhdr, .mha, .mhd) or folders holding one DICOM series"
)
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


@dataclass
class InferenceInput:
    """One unit of inference: a TIFF patient folder or a volume.

    Attributes:
        name: the patient folder name, or the volume's path relative to ``dataset_dir`` (posix).
        kind: "tiff", "nifti", "itk" (NRRD/MetaImage) or "dicom".
        path: the patient folder, volume file or DICOM folder.
        n_slices: slices along the last voxel axis (the number of TIFF files for "tiff").
        slices: the TIFF slice files in slice order ("tiff" only).
        spacing: voxel size in mm (i, j, k), None when unknown.
        geometry: what writing the mask needs: the NIfTI affine and header, or ITK origin,
            spacing and direction.
    """

    name: str
    kind: str
    path: Path
    n_slices: int
    slices: tuple[Path, ...] = ()
    spacing: tuple[float, ...] | None = None
    geometry: dict = field(default_factory=dict, repr=False)

    def mask_path(self, output_dir: Path) -> Path:
        """The volume mask written for this input under ``output_dir``."""
        if self.kind == "tiff":
            return output_dir / f"{self.name}_mask.nii.gz"
        base = self.name
        for suffix in (*NIFTI_SUFFIXES, *ITK_SUFFIXES):
            if self.kind != "dicom" and base.lower().endswith(suffix):
                out = ".nii.gz" if suffix == ".nii.gz" else ITK_SUFFIXES.get(suffix, suffix)
                return output_dir / f"{base[: -len(suffix)]}_mask{out}"
        return output_dir / f"{base}_mask.nii.gz"


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


def _unreadable(path: Path, error: Exception) -> ValueError:
    reason = (str(error).strip().splitlines() or [""])[0]
    return ValueError(
        f"cannot read {path}: {type(error).__name__}: {reason} ({EXPECTED_INPUTS}; is the file complete?)"
    )


def _check_channels(path: Path, channels: int) -> None:
    if channels not in (1, 3):
        raise ValueError(f"{path} has {channels} channels: expected {CHANNELS}")


def _nifti_input(path: Path, name: str) -> InferenceInput:
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


def _itk_input(path: Path, name: str, kind: str) -> InferenceInput:
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
        reader = _nifti_input if kind == "nifti" else _itk_input
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
                inputs.append(_nifti_input(path, name))
            else:
                inputs.append(_itk_input(path, name, "itk"))
        if dicom:
            name = here.relative_to(root).as_posix() if here != root else root.name
            inputs.append(_itk_input(here, name, "dicom"))
    if not inputs:
        if any(p.suffix.lower() in TIFF_SUFFIXES for p in root.iterdir()):
            raise DatasetError(no_slices_message(root))
        raise DatasetError(f"input folder {root} holds nothing to segment; {EXPECTED_INPUTS}.")
    inputs.sort(key=lambda inp: inp.name)
    logger.info("Found %d inputs (%d slices) in %s", len(inputs), sum(i.n_slices for i in inputs), root)
    return inputs


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
