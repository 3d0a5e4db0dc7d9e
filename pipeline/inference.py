"""Inference on new scans: lesion masks per slice and per volume, and a table of lesion volumes.

Inputs, all found under ``dataset_dir`` (a folder, searched recursively; a single volume file
is accepted too), in any mix:

- **kaggle_3m TIFF slices**: one folder per patient holding ``<patient>_<k>.tif`` (RGB: pre-contrast
  T1, FLAIR, post-contrast T1), found by :func:`pipeline.data.discover` without masks (masks
  present are ignored). The preprocessing is the training one (``preprocessing`` of
  bundle/configs/inference.json, mirrored by :func:`tiff_preprocessing`).
- **3-D volumes**: NIfTI (``.nii``, ``.nii.gz``, read with nibabel), NRRD (``.nrrd``, ``.nhdr``),
  MetaImage (``.mha``, ``.mhd``) and DICOM series (a folder of one series, read with ITK). Files
  whose name ends in ``_mask`` are taken for masks and ignored.

Volumes, decisions:

- Slices are the last voxel axis (k). Slice k is shown to the network as rows = the second voxel
  axis (j), columns = the first (i): for DICOM this is the stored pixel matrix (rows x columns)
  from which the kaggle_3m TIFFs were exported, and ITK and nibabel give the same slice of a file.
- Orientation (NIfTI affine, ITK direction; :mod:`pipeline.orientation`): no reorientation is
  done. A volume whose slices are not axial (its third voxel axis closer to left-right or
  anterior-posterior than to superior-inferior) is a ValueError naming the file, its axis codes
  and a one-line reslice. Oblique axial (e.g. tilted 20 degrees) and either slice order (S->I,
  I->S) are accepted. An axial volume upside down (rows posterior->anterior) or with rows and
  columns swapped relative to the training slices (columns left/right, rows anterior->posterior)
  is segmented with a warning: training flipped slices left-right, never upside down.
- Bad volumes (unreadable, wrong channel count, not axial) are found by :func:`find_inputs`,
  before any mask is written: one bad volume in a folder stops the run with no output written.
- Channels: a 3-channel volume (4-D NIfTI with the channel last, or a vector pixel type in ITK)
  is (pre-contrast T1, FLAIR, post-contrast T1) as is; a single-channel volume is taken as FLAIR
  and copied into the three channels (as the dataset does for missing sequences), with a
  warning; any other channel count is a ValueError naming the file.
- Per slice, as in training: min-max scaling to [0, 1] over the slice (all channels together),
  resize to ``image_size`` (area). The probabilities are resized back to the slice's shape
  (bilinear) and thresholded: lesion where sigmoid(logit) > ``threshold``.

Outputs under ``output_dir`` (each written to a temporary file in the same folder, then renamed):

- TIFF patient ``P``: ``P/<stem>_mask.tif`` per slice (uint8 0/255, the slice's H x W, the
  dataset's own naming) and ``P_mask.nii.gz``: the slices stacked as (H, W, n_slices) in slice
  order, uint8 0/1, identity affine (voxel units).
- NIfTI ``sub/x.nii.gz``: ``sub/x_mask.nii.gz`` (nibabel; the input's shape without channels,
  affine and header; uint8 0/1).
- NRRD / MetaImage: the mask in the same format (``.nhdr`` -> ``.nrrd``, ``.mhd`` -> ``.mha``: one
  file, so the rename is atomic), with the input's origin, spacing and direction (ITK).
- DICOM series folder ``s``: ``s_mask.nii.gz`` written by ITK with the series geometry.
- ``lesion_volumes.csv``: one row per input, sorted: input, n_slices, lesion_voxels,
  lesion_volume_mm3 (voxel count times the voxel volume from the NIfTI zooms or ITK spacing,
  rounded to 0.001 mm3; empty for TIFF slices, which carry no spacing).
"""

from __future__ import annotations

import bisect
import csv
import io
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import tifffile
import torch
from ignite.engine import Engine, Events
from monai.data import DataLoader
from monai.engines import SupervisedEvaluator
from monai.inferers import SimpleInferer
from monai.transforms import (
    Activationsd,
    Compose,
    EnsureChannelFirstd,
    EnsureTyped,
    LoadImaged,
    Resized,
    ScaleIntensityd,
)

import transforms
from pipeline.data import TIFF_SUFFIXES, DatasetError, discover, no_slices_message, scan_dataset
from pipeline.orientation import check_axial, itk_directions, nifti_directions

__all__ = [
    "InferenceInput",
    "MaskWriter",
    "SliceDataset",
    "find_inputs",
    "read_volume",
    "run_inference",
    "tiff_preprocessing",
]

logger = logging.getLogger(__name__)

NIFTI_SUFFIXES = (".nii", ".nii.gz")
ITK_SUFFIXES = {".nrrd": ".nrrd", ".nhdr": ".nrrd", ".mha": ".mha", ".mhd": ".mha"}
CHANNELS = "3 channels (pre-contrast T1, FLAIR, post-contrast T1) or 1 channel (FLAIR)"
EXPECTED_INPUTS = (
    "expected patient folders of kaggle_3m TIFF slices (<patient>/<patient>_<k>.tif), 3-D volumes "
    "(.nii, .nii.gz, .nrrd, .nhdr, .mha, .mhd) or folders holding one DICOM series"
)
CSV_NAME = "lesion_volumes.csv"
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


def tiff_preprocessing(image_size: int = 256) -> Compose:
    """The training preprocessing of an image (train.json ``deterministic_transforms``, image only).

    bundle/configs/inference.json spells the same chain out as ``preprocessing``; a test keeps
    the two and train.json in agreement.

    Args:
        image_size: side of the square the network sees. Default 256.
    """
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise ValueError(f"image_size must be a positive integer, not {image_size!r}")
    return Compose(
        [
            LoadImaged(keys="image", reader=transforms.TiffReader(), image_only=True),
            EnsureChannelFirstd(keys="image"),
            ScaleIntensityd(keys="image", minv=0.0, maxv=1.0),
            Resized(keys="image", spatial_size=(image_size, image_size), mode="area"),
            EnsureTyped(keys="image", dtype=torch.float32, track_meta=False),
        ]
    )


def _tiff_shape(path: Path) -> tuple[int, int]:
    with tifffile.TiffFile(path) as tif:
        page = tif.pages.first
        sizes = dict(zip(page.axes, page.shape))
    return sizes["Y"], sizes["X"]


class SliceDataset(torch.utils.data.Dataset):
    """The slices of all inputs, in input then slice order, preprocessed for the network.

    Items: ``{"image": (3, S, S) float32, "input": index into inputs, "slice": 0-based position,
    "height": H, "width": W}`` (H x W: the slice before resizing).

    Args:
        data: the inputs, from :func:`find_inputs`.
        transform: preprocessing of a TIFF record ``{"image": path}``.
        slice_transform: preprocessing of ``{"image": (3, H, W) array}``, a volume slice; it
            should be ``transform`` without its loading steps. Default: ``transform`` minus its
            first two transforms (LoadImaged, EnsureChannelFirstd).
    """

    def __init__(
        self,
        data: Sequence[InferenceInput],
        transform: Callable[[dict], dict],
        slice_transform: Callable[[dict], dict] | None = None,
    ) -> None:
        self.inputs = list(data)
        self.transform = transform
        if slice_transform is None:
            if not isinstance(transform, Compose):
                raise ValueError("slice_transform is required when transform is not a Compose")
            slice_transform = Compose(list(transform.transforms[2:]))
        self.slice_transform = slice_transform
        self.starts = np.cumsum([0] + [inp.n_slices for inp in self.inputs]).tolist()
        self._cached: tuple[int, np.ndarray] | None = None

    def __len__(self) -> int:
        return self.starts[-1]

    def _volume(self, index: int) -> np.ndarray:
        if self._cached is None or self._cached[0] != index:
            self._cached = None  # free the previous volume before reading the next one
            slices = read_volume(self.inputs[index])
            if len(slices) != self.inputs[index].n_slices:
                raise ValueError(
                    f"{self.inputs[index].path}: read {len(slices)} slices, its header says "
                    f"{self.inputs[index].n_slices}"
                )
            self._cached = (index, slices)
        return self._cached[1]

    def __getitem__(self, item: int) -> dict[str, Any]:
        if not 0 <= item < len(self):
            raise IndexError(f"slice {item} out of range for {len(self)} slices")
        index = bisect.bisect_right(self.starts, item) - 1
        position = item - self.starts[index]
        inp = self.inputs[index]
        if inp.kind == "tiff":
            path = inp.slices[position]
            image = self.transform({"image": str(path)})["image"]
            height, width = _tiff_shape(path)
            source: Path = path
        else:
            raw = self._volume(index)[position]
            image = self.slice_transform({"image": raw})["image"]
            height, width = raw.shape[1:]
            source = inp.path
        if image.shape[0] != 3:
            raise ValueError(f"{source} has {image.shape[0]} channels: expected RGB slices ({CHANNELS})")
        return {"image": image, "input": index, "slice": position, "height": height, "width": width}


def _atomic(path: Path, write: Callable[[Path], None]) -> None:
    """``write(tmp)`` to a temporary file beside ``path`` (same suffix), then rename it to ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _write_nifti(path: Path, mask_ijk: np.ndarray, affine: np.ndarray, header: Any = None) -> None:
    header = None if header is None else header.copy()
    if header is not None:
        header.set_data_dtype(np.uint8)
        header.set_slope_inter(1.0, 0.0)
    image = nib.Nifti1Image(mask_ijk.astype(np.uint8), affine, header)
    _atomic(path, lambda tmp: nib.save(image, tmp))


def _write_itk(path: Path, mask_kji: np.ndarray, geometry: dict) -> None:
    import itk

    image = itk.image_from_array(np.ascontiguousarray(mask_kji, dtype=np.uint8))
    image.SetOrigin(geometry["origin"])
    image.SetSpacing(geometry["spacing"])
    image.SetDirection(itk.matrix_from_array(np.ascontiguousarray(geometry["direction"])))
    _atomic(path, lambda tmp: itk.imwrite(image, str(tmp), compression=True))


class MaskWriter:
    """Collect the per-slice probabilities of an evaluator and write each input's masks when complete.

    Attach it to the evaluator (``val_handlers``) or call :meth:`add` and :meth:`finish` directly.

    Args:
        inputs: the inputs of the :class:`SliceDataset`, same order.
        output_dir: where the masks and ``lesion_volumes.csv`` go (created).
        threshold: lesion where the probability is above it, in (0, 1). Default 0.5.
    """

    def __init__(
        self, inputs: Sequence[InferenceInput], output_dir: str | os.PathLike, threshold: float = 0.5
    ):
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"threshold must be in (0, 1), not {threshold}")
        self.inputs = list(inputs)
        self.output_dir = Path(output_dir)
        self.threshold = float(threshold)
        for inp in self.inputs:
            # writing beside the inputs would overwrite ground-truth masks (<stem>_mask.tif, x_mask.nii.gz)
            folder = inp.path if inp.kind == "tiff" else inp.path.parent
            written = (
                self.output_dir / inp.name if inp.kind == "tiff" else inp.mask_path(self.output_dir).parent
            )
            if written.resolve() == folder.resolve():
                raise ValueError(
                    f"output_dir {self.output_dir} would write the masks of {inp.name} into its input folder "
                    f"{folder}, overwriting any masks there; choose another output_dir"
                )
        self.pending: dict[int, np.ndarray] = {}
        self.received: dict[int, int] = {}
        self.rows: dict[str, dict] = {}
        self.started = time.perf_counter()

    def attach(self, engine: Engine) -> None:
        if not engine.has_event_handler(self.iteration_completed, Events.ITERATION_COMPLETED):
            engine.add_event_handler(Events.STARTED, lambda _: setattr(self, "started", time.perf_counter()))
            engine.add_event_handler(Events.ITERATION_COMPLETED, self.iteration_completed)
            engine.add_event_handler(Events.COMPLETED, lambda _: self.finish())

    def iteration_completed(self, engine: Engine) -> None:
        for item, output in zip(engine.state.batch, engine.state.output):
            self.add(
                int(item["input"]),
                int(item["slice"]),
                output["pred"],
                int(item["height"]),
                int(item["width"]),
            )

    def add(self, index: int, position: int, prob: torch.Tensor, height: int, width: int) -> None:
        """One slice's probabilities ((1, S, S) or (S, S)), resized back to ``height`` x ``width``."""
        prob = torch.as_tensor(prob).detach().float().cpu().reshape(1, 1, *prob.shape[-2:])
        if tuple(prob.shape[-2:]) != (height, width):
            prob = torch.nn.functional.interpolate(
                prob, size=(height, width), mode="bilinear", align_corners=False
            )
        inp = self.inputs[index]
        if index not in self.pending:
            self.pending[index] = np.zeros((inp.n_slices, height, width), dtype=np.uint8)
            self.received[index] = 0
        self.pending[index][position] = (prob[0, 0] > self.threshold).numpy()
        self.received[index] += 1
        if self.received[index] == inp.n_slices:
            self._write(inp, self.pending.pop(index))

    def _write(self, inp: InferenceInput, masks: np.ndarray) -> None:
        """Write the masks (n_slices, rows, columns) of one input, uint8 0/1."""
        out = inp.mask_path(self.output_dir)
        if inp.kind == "tiff":
            for path, mask in zip(inp.slices, masks):
                target = self.output_dir / inp.name / f"{path.stem}_mask.tif"
                _atomic(target, lambda tmp, m=mask: tifffile.imwrite(tmp, m * np.uint8(255)))
            _write_nifti(out, masks.transpose(1, 2, 0), np.eye(4))
        elif inp.kind == "nifti":
            _write_nifti(out, masks.transpose(2, 1, 0), inp.geometry["affine"], inp.geometry["header"])
        else:
            _write_itk(out, masks, inp.geometry)
        voxels = int(masks.sum())
        volume = "" if inp.spacing is None else repr(round(voxels * float(np.prod(inp.spacing)), 3))
        self.rows[inp.name] = {
            "input": inp.name,
            "n_slices": inp.n_slices,
            "lesion_voxels": voxels,
            "lesion_volume_mm3": volume,
        }
        logger.info("%s: %d lesion voxels in %d slices -> %s", inp.name, voxels, inp.n_slices, out)

    def finish(self) -> Path:
        """Write ``lesion_volumes.csv`` and return its path.

        Raises:
            RuntimeError: some input did not receive all its slices.
        """
        missing = [inp.name for i, inp in enumerate(self.inputs) if inp.name not in self.rows]
        if missing:
            raise RuntimeError(f"inference ended before every slice was predicted; incomplete: {missing[:5]}")
        buffer = io.StringIO()
        writer = csv.DictWriter(
            buffer, fieldnames=["input", "n_slices", "lesion_voxels", "lesion_volume_mm3"]
        )
        writer.writeheader()
        writer.writerows(self.rows[name] for name in sorted(self.rows))
        path = self.output_dir / CSV_NAME
        _atomic(path, lambda tmp: tmp.write_text(buffer.getvalue()))
        slices = sum(inp.n_slices for inp in self.inputs)
        seconds = time.perf_counter() - self.started
        logger.info(
            "Segmented %d slices of %d inputs in %.1f s (%.2f slices/s); lesion volumes in %s",
            slices,
            len(self.inputs),
            seconds,
            slices / max(seconds, 1e-9),
            path,
        )
        return path


def run_inference(
    dataset_dir: str | os.PathLike,
    network: torch.nn.Module,
    output_dir: str | os.PathLike,
    image_size: int = 256,
    threshold: float = 0.5,
    device: str | torch.device = "cpu",
    batch_size: int = 8,
) -> Path:
    """Segment every input under ``dataset_dir`` and write the masks and lesion volumes.

    The same engine as bundle/configs/inference.json: a SupervisedEvaluator over a
    :class:`SliceDataset`, sigmoid post-processing and a :class:`MaskWriter`.

    Args:
        dataset_dir: a folder of inputs or one volume file (see the module docstring).
        network: returns one logit channel, (B, 1, S, S) for (B, 3, S, S), weights loaded.
        output_dir: where the outputs go (created).
        image_size: side S of the network's input. Default 256.
        threshold: probability threshold. Default 0.5.
        device: default "cpu".
        batch_size: slices per forward pass. Default 8.

    Returns:
        The path of ``lesion_volumes.csv``.
    """
    inputs = find_inputs(dataset_dir)
    dataset = SliceDataset(inputs, tiff_preprocessing(image_size))
    writer = MaskWriter(inputs, output_dir, threshold)
    evaluator = SupervisedEvaluator(
        device=torch.device(device),
        val_data_loader=DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0),
        network=network.to(device),
        inferer=SimpleInferer(),
        postprocessing=Activationsd(keys="pred", sigmoid=True),
        val_handlers=[writer],
    )
    evaluator.run()
    return Path(output_dir) / CSV_NAME
