"""Validation metrics of the training workflow, as ignite metrics for MONAI's SupervisedEvaluator.

The evaluator's postprocessing turns ``pred`` into probabilities (sigmoid); these metrics threshold
them themselves (default 0.5), so they do not depend on what else the postprocessing does.
Each reads the decollated ``engine.state.output`` (``pred``, ``label``) and, for the per-volume
Dice, the ``patient`` and ``slice`` keys of ``engine.state.batch`` that the datalist records carry.

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
        patient, slice_index = batch.get("patient"), batch.get("slice")
        if patient is None or slice_index is None:
            raise KeyError(
                "PerVolumeDice needs 'patient' and 'slice' keys in each validation record "
                "(records from pipeline.data.discovery.discover carry them)"
            )
        self._acc.add_counts(
            str(patient),
            int(slice_index),
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
