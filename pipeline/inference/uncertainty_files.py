"""The uncertainty files of one input: the per-voxel map and its per-patient scores.

Decisions:

- **Map**: ``<name>_uncertainty.nii.gz`` beside ``<name>_mask.nii.gz`` (``.nrrd`` / ``.mha`` beside
  NRRD / MetaImage masks): the per-voxel variance of the samples' probabilities
  (:mod:`pipeline.evaluation.uncertainty`), float32, in the mask's (FLAIR's) voxel grid, with the
  mask's geometry (NIfTI affine and header, ITK origin, spacing and direction, or the kaggle_3m
  geometry of a TIFF patient, :data:`pipeline.inference.mask_files.TIFF_AFFINE`). 0 where all
  samples agree, at most 0.25. Written to a temporary file and renamed, like the masks.
- **Scores**: ``<name>_uncertainty.json`` (sorted keys): the method, the samples, the scores of
  :data:`pipeline.evaluation.uncertainty.SCORES` and the map's file name, so that a run resumed
  with ``skip_existing`` reports a kept input's scores without recomputing them (the map alone
  cannot give them back).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from pipeline.atomic import write_atomically, write_json
from pipeline.evaluation.uncertainty import SCORES
from pipeline.inference.input_record import InferenceInput
from pipeline.inference.mask_files import TIFF_AFFINE

MAP_SUFFIX = "_uncertainty"


def map_path(inp: InferenceInput, output_dir: Path) -> Path:
    """The uncertainty map of ``inp``: its mask's path with ``_mask`` replaced by ``_uncertainty``."""
    mask = inp.mask_path(Path(output_dir))
    stem, _, suffix = mask.name.rpartition("_mask")
    return mask.with_name(f"{stem}{MAP_SUFFIX}{suffix}")


def scores_path(inp: InferenceInput, output_dir: Path) -> Path:
    """The scores file of ``inp`` (``<name>_uncertainty.json``)."""
    mask = inp.mask_path(Path(output_dir))
    return mask.with_name(f"{mask.name.rpartition('_mask')[0]}{MAP_SUFFIX}.json")


def write_map(inp: InferenceInput, map_kji: np.ndarray, output_dir: Path) -> Path:
    """Write the map (n_slices, rows j, columns i) as float32 in the mask's geometry; its path.

    Raises:
        ValueError: the input has no geometry to write a volume with.
    """
    path = map_path(inp, output_dir)
    values = np.ascontiguousarray(np.asarray(map_kji, dtype=np.float32))
    if inp.kind == "tiff" or "affine" in inp.geometry:
        affine = TIFF_AFFINE if inp.kind == "tiff" else inp.geometry["affine"]
        header = None if inp.kind == "tiff" or inp.geometry.get("header") is None else inp.geometry["header"]
        if header is not None:
            header = header.copy()
            header.set_data_dtype(np.float32)
            header.set_slope_inter(1.0, 0.0)
        image = nib.Nifti1Image(np.ascontiguousarray(values.transpose(2, 1, 0)), affine, header)
        write_atomically(path, lambda tmp: nib.save(image, tmp), keep_suffix=True)
    elif "origin" in inp.geometry:
        import itk

        image = itk.image_from_array(values)
        image.SetOrigin(inp.geometry["origin"])
        image.SetSpacing(inp.geometry["spacing"])
        direction = np.ascontiguousarray(inp.geometry["direction"], dtype=float)
        image.SetDirection(itk.matrix_from_array(direction))
        write_atomically(path, lambda tmp: itk.imwrite(image, str(tmp), compression=True), keep_suffix=True)
    else:
        raise ValueError(
            f"{inp.path}: no geometry (affine or origin/spacing/direction) to write its uncertainty map with"
        )
    return path


def write_scores(
    inp: InferenceInput, output_dir: Path, method: str, samples: int | None, scores: dict[str, float]
) -> Path:
    """Write ``<name>_uncertainty.json``; its path. ``samples`` None: not known (an ensemble's)."""
    record = {"input": inp.name, "method": method, "samples": samples, "map": map_path(inp, output_dir).name}
    record.update({name: float(scores[name]) for name in SCORES})
    return write_json(scores_path(inp, output_dir), record)


def read_scores(inp: InferenceInput, output_dir: Path, method: str) -> dict[str, Any] | None:
    """The scores written earlier for ``inp`` by ``method``, or None when they or the map are
    missing, unreadable or of another method (then the input is segmented again)."""
    path = scores_path(inp, output_dir)
    if not path.is_file() or not map_path(inp, output_dir).is_file():
        return None
    try:
        record = json.loads(path.read_text())
        if record.get("method") != method:
            return None
        return {name: float(record[name]) for name in SCORES}
    except (ValueError, KeyError, TypeError):
        return None
