"""The out-of-fold masks of a cross-validation fold's evaluation, saved per patient.

:class:`OutOfFoldReport` is evaluate.json's :class:`pipeline.evaluation.report.EvaluationReport`
that also writes, before summary.json, each evaluated patient's volumes at the evaluated
resolution to ``<output_dir>/masks/<patient>.npz`` (compressed, written atomically): ``truth``,
``slices`` (the slice numbers, in stack order) and one boolean mask per post-processing option
(:data:`pipeline.evaluation.volume_evaluation.VARIANTS`), the masks the records of summary.json
were measured on. ``python -m pipeline crossval`` evaluates every fold with it
(``--evaluation_report#_target_ pipeline.evaluation.pooled_masks.OutOfFoldReport``), so the pooled
out-of-fold results can be recomputed from the masks by anyone.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from ignite.engine import Engine

from pipeline.atomic import write_atomically
from pipeline.evaluation import metrics
from pipeline.evaluation.report import EvaluationReport
from pipeline.evaluation.volume_evaluation import VARIANTS

MASKS = "masks"


def variant_masks(
    prob: np.ndarray, prob_tta: np.ndarray, threshold: float, min_component_voxels: int
) -> dict:
    """The mask of every option of one patient's probability volumes (as evaluate_volumes makes them)."""
    masks = {}
    for base, volume in (("threshold", prob), ("tta", prob_tta)):
        masks[base] = volume > threshold
        masks[f"{base}+lcc"] = metrics.largest_component(masks[base])
        masks[f"{base}+mcs"] = metrics.remove_small_components(masks[base], min_component_voxels)
    return {variant: masks[variant] for variant in VARIANTS}


def mask_file(eval_dir: str | Path, patient: str) -> Path:
    """``<eval_dir>/masks/<patient>.npz``."""
    return Path(eval_dir) / MASKS / f"{patient}.npz"


def read_masks(path: str | Path) -> dict[str, np.ndarray]:
    """The arrays of a mask file: ``truth``, ``slices`` and one mask per option."""
    with np.load(path) as data:
        return {key: data[key] for key in data.files}


class OutOfFoldReport(EvaluationReport):
    """EvaluationReport that also saves every patient's masks (module docstring); same arguments."""

    def completed(self, engine: Engine | None = None) -> dict:
        if self.slices:
            for patient in sorted(self.slices):
                self._write_masks(patient)
        return super().completed(engine)

    def _write_masks(self, patient: str) -> Path:
        order = sorted(self.slices[patient])
        stack = {
            key: np.stack([self.slices[patient][i][key] for i in order])
            for key in ("prob", "prob_tta", "truth")
        }
        masks = variant_masks(stack["prob"], stack["prob_tta"], self.threshold, self.min_component_voxels)
        arrays = {"truth": stack["truth"].astype(bool), "slices": np.asarray(order, dtype=np.int64), **masks}

        def write(tmp: Path) -> None:
            with open(tmp, "wb") as handle:
                np.savez_compressed(handle, **arrays)

        return write_atomically(mask_file(self.output_dir, patient), write)
