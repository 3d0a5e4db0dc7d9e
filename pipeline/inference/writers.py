"""Writing the lesion masks of inference in the format of each input, and ``lesion_volumes.csv``.

Per slice, the probabilities are resized back to the slice's shape (bilinear) and thresholded:
lesion where sigmoid(logit) > ``threshold``.

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

import csv
import io
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import tifffile
import torch
from ignite.engine import Engine, Events

from pipeline.atomic import write_atomically
from pipeline.inference.input_record import InferenceInput

logger = logging.getLogger(__name__)

CSV_NAME = "lesion_volumes.csv"


def _write_nifti(path: Path, mask_ijk: np.ndarray, affine: np.ndarray, header: Any = None) -> None:
    header = None if header is None else header.copy()
    if header is not None:
        header.set_data_dtype(np.uint8)
        header.set_slope_inter(1.0, 0.0)
    image = nib.Nifti1Image(mask_ijk.astype(np.uint8), affine, header)
    write_atomically(path, lambda tmp: nib.save(image, tmp), keep_suffix=True)


def _write_itk(path: Path, mask_kji: np.ndarray, geometry: dict) -> None:
    import itk

    image = itk.image_from_array(np.ascontiguousarray(mask_kji, dtype=np.uint8))
    image.SetOrigin(geometry["origin"])
    image.SetSpacing(geometry["spacing"])
    image.SetDirection(itk.matrix_from_array(np.ascontiguousarray(geometry["direction"])))
    write_atomically(path, lambda tmp: itk.imwrite(image, str(tmp), compression=True), keep_suffix=True)


class MaskWriter:
    """Collect the per-slice probabilities of an evaluator and write each input's masks when complete.

    Attach it to the evaluator (``val_handlers``) or call :meth:`add` and :meth:`finish` directly.

    Args:
        inputs: the inputs of the :class:`pipeline.inference.workflow.SliceDataset`, same order.
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
                write_atomically(
                    target, lambda tmp, m=mask: tifffile.imwrite(tmp, m * np.uint8(255)), keep_suffix=True
                )
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
        write_atomically(path, lambda tmp: tmp.write_text(buffer.getvalue()), keep_suffix=True)
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
