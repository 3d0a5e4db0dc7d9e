"""Validation metrics of the training workflow, as ignite metrics for MONAI's SupervisedEvaluator.

The evaluator's postprocessing turns ``pred`` into probabilities (sigmoid); these metrics threshold
them themselves (default 0.5), so they do not depend on what else the postprocessing does.
Each reads the decollated ``engine.state.output`` (``pred``, ``label``) and, for the per-patient
metrics, the ``patient`` and ``slice`` keys of ``engine.state.batch`` that the datalist records carry.

Under torch.distributed each metric gathers its per-slice statistics from every rank before
computing, so every rank reports the same numbers.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from ignite.engine import Engine
from ignite.metrics import Metric

from pipeline.evaluation import detection
from pipeline.evaluation.metrics import dice
from pipeline.evaluation.slice_stack import SliceStack
from pipeline.evaluation.volume_dice import VolumeDiceAccumulator


def _gather(obj: Any) -> list[Any]:
    """Objects of every rank (just ``[obj]`` outside torch.distributed)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        gathered: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, obj)
        return gathered
    return [obj]


def _items(engine: Engine) -> list[tuple[dict, dict]]:
    """(output item, batch item) pairs of a decollated iteration."""
    outputs, batch = engine.state.output, engine.state.batch
    if not isinstance(outputs, list) or not isinstance(batch, list):
        raise TypeError(
            "validation metrics expect decollated output and batch "
            "(SupervisedEvaluator with decollate=True), "
            f"got {type(outputs).__name__} and {type(batch).__name__}"
        )
    return list(zip(outputs, batch))


def _binary(x: torch.Tensor, threshold: float) -> torch.Tensor:
    return torch.as_tensor(x).detach() > threshold


def _patient_and_slice(batch: dict, metric: str) -> tuple[str, int]:
    patient, slice_index = batch.get("patient"), batch.get("slice")
    if patient is None or slice_index is None:
        raise KeyError(
            f"{metric} needs 'patient' and 'slice' keys in each validation record "
            "(records from pipeline.data.discovery.discover carry them)"
        )
    return str(patient), int(slice_index)


def _plane(mask: torch.Tensor) -> np.ndarray:
    """(H, W) numpy mask from a (1, H, W) or (H, W) tensor."""
    return (mask[0] if mask.ndim == 3 and mask.shape[0] == 1 else mask).cpu().numpy()


class _ItemMetric(Metric):
    """A metric updated item by item from the decollated evaluator state."""

    def __init__(self, threshold: float = 0.5) -> None:
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"threshold must be in (0, 1), not {threshold}")
        self.threshold = threshold
        super().__init__(output_transform=lambda x: x)

    @torch.no_grad()
    def iteration_completed(self, engine: Engine) -> None:
        for output, batch in _items(engine):
            self.update_item(output, batch)

    def update(self, output: Any) -> None:  # ignite's abstract API; items arrive via update_item
        raise NotImplementedError("use iteration_completed / update_item")

    def update_item(self, output: dict, batch: dict) -> None:
        raise NotImplementedError


class PerVolumeDice(_ItemMetric):
    """Mean over patients of the Dice of each patient's restacked volume (the paper's DSC).

    Patients whose truth and prediction are both empty have an undefined Dice and are left out of
    the mean; when no patient has a defined Dice the value is 0.0 (so best-model selection still
    compares numbers).

    Args:
        threshold: probability threshold, default 0.5.
    """

    def reset(self) -> None:
        self._acc = VolumeDiceAccumulator()

    def update_item(self, output: dict, batch: dict) -> None:
        pred = _binary(output["pred"], self.threshold)
        truth = _binary(output["label"], 0.5)
        patient, slice_index = _patient_and_slice(batch, "PerVolumeDice")
        self._acc.add_counts(
            patient,
            slice_index,
            int((pred & truth).sum()),
            int(pred.sum()),
            int(truth.sum()),
        )

    def compute(self) -> float:
        merged = VolumeDiceAccumulator()
        for state in _gather(self._acc.state()):
            merged.merge(state)
        value = merged.mean()
        return 0.0 if math.isnan(value) else float(value)


class PatientDetection(_ItemMetric):
    """False-positive-aware per-volume Dice, with the false-positive and detection figures beside it.

    The value (what a key metric selects on) is the mean over patients of
    :func:`pipeline.evaluation.detection.fp_aware_dice`: per-volume Dice for a patient with a lesion;
    1 for a lesion-free patient with no predicted 3-D component of ``min_component_voxels`` or more,
    0 otherwise (0.0 when there is no patient). On completion the metric also records, as
    ``prefix + name`` in ``engine.state.metrics`` (so MLflow and the progress line get them):
    ``lesion_dice`` (mean per-volume Dice over patients with a lesion), ``sensitivity``,
    ``specificity``, ``fp_voxels_lesion_free`` (mean predicted voxels per lesion-free patient) and
    ``fp_voxels_lesion_free_slices`` (mean per patient of predicted voxels on slices without lesion).
    A figure without patients to measure it on (specificity when no patient is lesion-free) is left
    out, not reported as a number. Definitions: :mod:`pipeline.evaluation.detection`.

    Args:
        min_component_voxels: the smallest 3-D component that calls a patient positive, in voxels at
            the validation resolution. Default ``detection.DEFAULT_MIN_COMPONENT_VOXELS`` (10).
        threshold: probability threshold, default 0.5.
        prefix: start of the names of the figures beside the value. Default "val_".
    """

    def __init__(
        self,
        min_component_voxels: int = detection.DEFAULT_MIN_COMPONENT_VOXELS,
        threshold: float = 0.5,
        prefix: str = "val_",
    ) -> None:
        self.min_component_voxels = detection.check_min_component_voxels(min_component_voxels)
        self.prefix = prefix
        super().__init__(threshold=threshold)

    def reset(self) -> None:
        self._stack = SliceStack()
        self.figures: dict[str, float] = {}

    def update_item(self, output: dict, batch: dict) -> None:
        patient, slice_index = _patient_and_slice(batch, "PatientDetection")
        pred = _plane(_binary(output["pred"], self.threshold))
        self._stack.add(patient, slice_index, pred, _plane(_binary(output["label"], 0.5)))

    def compute(self) -> float:
        merged = SliceStack()
        for state in _gather(self._stack.state()):
            merged.merge(state)
        records = [
            {"dice": dice(pred, truth), **detection.volume_detection(pred, truth, self.min_component_voxels)}
            for pred, truth in merged.volumes().values()
        ]
        figures = detection.detection_aggregates(records)
        beside = {
            "lesion_dice": figures["lesion_dice"]["mean"],
            "sensitivity": figures["sensitivity"],
            "specificity": figures["specificity"],
            "fp_voxels_lesion_free": figures["fp_voxels_lesion_free"]["mean"],
            "fp_voxels_lesion_free_slices": figures["fp_voxels_lesion_free_slices"]["mean"],
        }
        self.figures = {name: float(value) for name, value in beside.items() if value is not None}
        value = figures["fp_aware_dice"]["mean"]
        return 0.0 if value is None else float(value)

    def completed(self, engine: Engine, name: str) -> None:
        super().completed(engine, name)
        for figure, value in self.figures.items():
            engine.state.metrics[self.prefix + figure] = value


class SliceDice(_ItemMetric):
    """Mean Dice over validation slices, thresholded; slices empty in truth and prediction are skipped.

    Args:
        threshold: probability threshold, default 0.5.
    """

    def reset(self) -> None:
        self._values: list[float] = []

    def update_item(self, output: dict, batch: dict) -> None:
        pred = _binary(output["pred"], self.threshold)
        truth = _binary(output["label"], 0.5)
        denominator = int(pred.sum()) + int(truth.sum())
        if denominator:
            self._values.append(2.0 * int((pred & truth).sum()) / denominator)

    def compute(self) -> float:
        values = [v for part in _gather(self._values) for v in part]
        return float(np.mean(values)) if values else 0.0


class ProbabilityLoss(_ItemMetric):
    """Validation BCE (mean over pixels) or soft Dice loss (over the whole validation set).

    Args:
        kind: "bce" or "dice". The Dice loss is 1 - (2*sum(p*y) + 1) / (sum(p) + sum(y) + 1), the
            training loss's Dice term (smoothing 1) computed over all validation pixels at once.
        eps: clipping of probabilities for the BCE, default 1e-7.
    """

    def __init__(self, kind: str = "bce", eps: float = 1e-7) -> None:
        if kind not in ("bce", "dice"):
            raise ValueError(f"kind must be 'bce' or 'dice', not {kind!r}")
        self.kind = kind
        self.eps = eps
        super().__init__(threshold=0.5)

    def reset(self) -> None:
        self._sums = np.zeros(4)  # bce sum, pixel count, sum(p*y), sum(p)+sum(y)

    def update_item(self, output: dict, batch: dict) -> None:
        raw = torch.as_tensor(output["pred"]).detach().double()
        y = torch.as_tensor(output["label"]).detach().double()
        p = raw.clamp(self.eps, 1 - self.eps)  # clipped for the logarithms only
        bce = -(y * p.log() + (1 - y) * (1 - p).log())
        self._sums += [float(bce.sum()), raw.numel(), float((raw * y).sum()), float(raw.sum() + y.sum())]

    def compute(self) -> float:
        total = np.sum(_gather(self._sums), axis=0)
        if self.kind == "bce":
            return float(total[0] / max(total[1], 1))
        return float(1.0 - (2.0 * total[2] + 1.0) / (total[3] + 1.0))
