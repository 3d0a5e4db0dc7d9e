"""The mask files of one input: where they go, writing them, and reading them back.

Every mask is uint8 0/1 in the input's (FLAIR's) voxel grid, written to a temporary file beside
its target and renamed (:func:`pipeline.atomic.write_atomically`). Paths keep the input's name,
which is its path relative to ``dataset_dir`` for volumes, DICOM series and patient folders, so
two patients with the same folder name in different parent folders get different outputs; two
inputs that would still write the same file are refused before anything is written
(:func:`check_outputs`).

Decisions, per input kind (:attr:`InferenceInput.kind`; for "patient", FLAIR's geometry decides):

- **TIFF patient** ``P``: ``P/<stem>_mask.tif`` per slice (uint8 0/255, the slice's H x W, the
  dataset's own naming) and ``P_mask.nii.gz``. The TIFFs carry no geometry, so the volume gets
  the one the kaggle_3m slices have (:mod:`pipeline.inference.orientation`): voxel axis i = the
  columns, running right->left, j = the rows, anterior->posterior, k = the slices in slice order,
  along +S; unit spacing, origin 0 (:data:`TIFF_AFFINE`, axis codes "LPS"). The array is stored
  (W, H, n_slices), i.e. column, row, slice, as every other NIfTI this project reads or writes,
  so the project's own orientation check accepts the file without a warning and reading it back
  as a volume gives the TIFF slices' rows and columns.
- **NIfTI** FLAIR (``sub/x.nii.gz``, or a patient whose FLAIR is NIfTI): ``sub/x_mask.nii.gz``
  with the input's affine and header (nibabel).
- **NRRD / MetaImage**: the mask in the same format (``.nhdr`` -> ``.nrrd``, ``.mhd`` -> ``.mha``:
  one file, so the rename is atomic), with the input's origin, spacing and direction (ITK).
- **DICOM series** ``s`` (or a patient whose FLAIR is a DICOM series): ``s_mask.nii.gz`` written
  by ITK with the series geometry; when FLAIR's DICOM files are known also ``s_seg.dcm``, a DICOM
  Segmentation (:mod:`pipeline.inference.dicom_seg`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from pipeline.atomic import write_atomically
from pipeline.inference.input_record import NIFTI_SUFFIXES, InferenceInput
from transforms.plain_tiff import tiff_bytes, write_bytes

# columns (i) toward the patient's left, rows (j) toward posterior, slices (k) toward superior
TIFF_AFFINE = np.diag([-1.0, -1.0, 1.0, 1.0])
SEG_SUFFIX = "_seg.dcm"


def seg_path(inp: InferenceInput, output_dir: Path) -> Path | None:
    """The DICOM Segmentation of ``inp`` under ``output_dir``, None when none is due (FLAIR is
    not a DICOM series whose files are known)."""
    return Path(output_dir) / f"{inp.name}{SEG_SUFFIX}" if inp.dicom_files else None


def overlay_path(inp: InferenceInput, output_dir: Path) -> Path:
    """The overlay montage of ``inp`` (:mod:`pipeline.inference.report`)."""
    return Path(output_dir) / f"{inp.name}_overlay.png"


def slice_mask_paths(inp: InferenceInput, output_dir: Path) -> list[Path]:
    """The per-slice TIFF masks of a TIFF patient (none for volumes)."""
    if inp.kind != "tiff":
        return []
    return [Path(output_dir) / inp.name / f"{path.stem}_mask.tif" for path in inp.slices]


def outputs_of(inp: InferenceInput, output_dir: Path) -> list[Path]:
    """Every mask file written for ``inp``: what ``skip_existing`` requires to exist."""
    seg = seg_path(inp, output_dir)
    return [inp.mask_path(Path(output_dir)), *slice_mask_paths(inp, output_dir), *([seg] if seg else [])]


def check_outputs(inputs: Sequence[InferenceInput], output_dir: Path) -> None:
    """Refuse an ``output_dir`` that would overwrite inputs' own masks, or two inputs one file.

    Raises:
        ValueError: naming the input(s), the folder or file, and the fix.
    """
    output_dir = Path(output_dir)
    owners: dict[Path, str] = {}
    for inp in inputs:
        if inp.error:
            continue
        # writing beside the inputs would overwrite ground-truth masks (<stem>_mask.tif, x_mask.nii.gz)
        folder = inp.path if inp.kind == "tiff" else inp.path.parent
        mask = inp.mask_path(output_dir)
        written = output_dir / inp.name if inp.kind == "tiff" else mask.parent
        if written.resolve() == folder.resolve():
            raise ValueError(
                f"output_dir {output_dir} would write the masks of {inp.name} into its input folder "
                f"{folder}, overwriting any masks there; choose another output_dir"
            )
        for path in outputs_of(inp, output_dir):
            key = path.resolve()
            if key in owners:
                raise ValueError(
                    f"{owners[key]} and {inp.name} would both write {path}; give the two patients "
                    "folders of different names (or move one into a subfolder) and run again"
                )
            owners[key] = inp.name


def _write_nifti(path: Path, mask_ijk: np.ndarray, affine: np.ndarray, header: Any = None) -> None:
    header = None if header is None else header.copy()
    if header is not None:
        header.set_data_dtype(np.uint8)
        header.set_slope_inter(1.0, 0.0)
    # the (i, j, k) view of a (k, j, i) array is Fortran-ordered, the order NIfTI stores: no copy
    image = nib.Nifti1Image(np.asarray(mask_ijk, dtype=np.uint8), affine, header)
    write_atomically(path, lambda tmp: nib.save(image, tmp), keep_suffix=True)


def _write_itk(path: Path, mask_kji: np.ndarray, geometry: dict) -> None:
    import itk

    image = itk.image_from_array(np.ascontiguousarray(mask_kji, dtype=np.uint8))
    image.SetOrigin(geometry["origin"])
    image.SetSpacing(geometry["spacing"])
    image.SetDirection(itk.matrix_from_array(np.ascontiguousarray(geometry["direction"], dtype=float)))
    write_atomically(path, lambda tmp: itk.imwrite(image, str(tmp), compression=True), keep_suffix=True)


def write_mask_files(inp: InferenceInput, mask_kji: np.ndarray, output_dir: Path) -> Path:
    """Write the masks of ``inp`` from its mask (n_slices, rows j, columns i), 0/1; the volume's path.

    Raises:
        ValueError: the input has no geometry to write a volume mask with.
    """
    output_dir = Path(output_dir)
    out = inp.mask_path(output_dir)
    mask_kji = np.asarray(mask_kji, dtype=np.uint8)
    if inp.kind == "tiff":
        # tifffile's bytes for each slice (transforms.plain_tiff: its header once, then the pixels)
        for target, mask in zip(slice_mask_paths(inp, output_dir), mask_kji * np.uint8(255)):
            data = tiff_bytes(mask)
            write_atomically(target, lambda tmp, d=data: write_bytes(tmp, d), keep_suffix=True)
        _write_nifti(out, mask_kji.transpose(2, 1, 0), TIFF_AFFINE)
    elif "affine" in inp.geometry:
        _write_nifti(out, mask_kji.transpose(2, 1, 0), inp.geometry["affine"], inp.geometry.get("header"))
    elif "origin" in inp.geometry:
        _write_itk(out, mask_kji, inp.geometry)
    else:
        raise ValueError(
            f"{inp.path}: no geometry (affine or origin/spacing/direction) to write its mask with"
        )
    return out


def read_mask(inp: InferenceInput, output_dir: Path) -> np.ndarray | None:
    """The volume mask written earlier for ``inp`` as (n_slices, rows, columns) uint8, or None when
    it is missing, unreadable, of another slice count than the input's, or a TIFF patient's
    volume without :data:`TIFF_AFFINE` (then it is segmented again)."""
    path = inp.mask_path(Path(output_dir))
    if not path.is_file():
        return None
    try:
        if path.name.lower().endswith(NIFTI_SUFFIXES):
            image = nib.load(path)
            if inp.kind == "tiff" and not np.allclose(image.affine, TIFF_AFFINE):
                return None  # an older layout (H, W, n) with an identity affine: written again
            mask = np.asarray(image.dataobj).transpose(2, 1, 0)
        else:
            import itk

            mask = itk.array_from_image(itk.imread(str(path)))
    except Exception:
        return None
    if mask.ndim != 3 or mask.shape[0] != inp.n_slices:
        return None
    return (mask != 0).astype(np.uint8)
