"""Per-volume Dice (the paper's metric) from slices that arrive in any order, in numpy.

Slices are stacked back into each patient's volume by their slice number; Dice follows the
conventions of :mod:`pipeline.evaluation.metrics` (NaN when prediction and truth are both empty).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from pipeline.evaluation.metrics import _binary_pair, _dice_from_counts

VolumeDiceState = dict[str, dict[int, tuple[int, int, int]]]


class VolumeDiceAccumulator:
    """Per-patient Dice of restacked volumes, accumulated slice by slice (the paper's DSC).

    Each slice contributes its counts (|P∩T|, |P|, |T|); a patient's Dice is computed from the
    sums over its slices, which equals the Dice of the stacked volume. ``state()`` is a plain dict
    of ints that ``torch.distributed.all_gather_object`` can send; ``merge`` adds another state,
    so validation split over several processes gives the same result as one process.
    """

    def __init__(self) -> None:
        self._counts: VolumeDiceState = {}

    def add(self, patient: str, slice_index: int, pred: Any, truth: Any) -> None:
        """Count one slice.

        Args:
            patient: patient id.
            slice_index: the slice's number within the patient.
            pred: predicted mask of the slice (boolean or 0/1).
            truth: true mask of the slice, same shape.

        Raises:
            ValueError: shapes differ or the slice was already counted.
        """
        p, t = _binary_pair(pred, truth)
        self.add_counts(
            patient,
            slice_index,
            int(np.count_nonzero(p & t)),
            int(np.count_nonzero(p)),
            int(np.count_nonzero(t)),
        )

    def add_counts(
        self, patient: str, slice_index: int, intersection: int, pred_sum: int, truth_sum: int
    ) -> None:
        """Count one slice from precomputed pixel counts.

        Args:
            patient: patient id.
            slice_index: the slice's number within the patient.
            intersection: pixels foreground in both prediction and truth.
            pred_sum: foreground pixels of the prediction.
            truth_sum: foreground pixels of the truth.

        Raises:
            ValueError: impossible counts or the slice was already counted.
        """
        counts = (int(intersection), int(pred_sum), int(truth_sum))
        if min(counts) < 0 or counts[0] > min(counts[1], counts[2]):
            raise ValueError(
                f"impossible counts for {patient} slice {slice_index}: intersection {counts[0]}, "
                f"pred_sum {counts[1]}, truth_sum {counts[2]} (need 0 <= intersection <= both sums)"
            )
        slices = self._counts.setdefault(str(patient), {})
        key = int(slice_index)
        if key in slices:
            raise ValueError(f"{patient} slice {key} was counted twice: each slice must be added once")
        slices[key] = counts

    def state(self) -> VolumeDiceState:
        """A copy of the counts: patient -> slice index -> (intersection, pred_sum, truth_sum)."""
        return {patient: dict(slices) for patient, slices in self._counts.items()}

    def merge(self, other_state: Mapping[str, Mapping[int, Sequence[int]]]) -> None:
        """Add the counts of another accumulator's ``state()``.

        Raises:
            ValueError: a slice is in both (it would be counted twice).
        """
        entries = [
            (str(patient), int(slice_index), counts)
            for patient, slices in other_state.items()
            for slice_index, counts in slices.items()
        ]
        for patient, slice_index, _ in entries:  # check first, so a failed merge changes nothing
            if slice_index in self._counts.get(patient, {}):
                raise ValueError(
                    f"{patient} slice {slice_index} is in both states: each slice must be counted once"
                )
        for patient, slice_index, (intersection, pred_sum, truth_sum) in entries:
            self.add_counts(patient, slice_index, intersection, pred_sum, truth_sum)

    def result(self) -> dict[str, float]:
        """Dice of each patient's volume (NaN when the patient's truth and prediction are empty)."""
        result = {}
        for patient in sorted(self._counts):
            sums = np.sum(list(self._counts[patient].values()), axis=0)
            result[patient] = _dice_from_counts(int(sums[0]), int(sums[1]), int(sums[2]))
        return result

    def mean(self) -> float:
        """Mean Dice over patients whose Dice is defined; NaN when there is none."""
        defined = [v for v in self.result().values() if not math.isnan(v)]
        return float(np.mean(defined)) if defined else math.nan


def per_volume_dice(records: Iterable[tuple[str, int, Any, Any]]) -> dict[str, float]:
    """Dice of each patient's restacked volume from per-slice masks.

    Args:
        records: ``(patient, slice_index, pred_2d, truth_2d)`` tuples, in any order.

    Returns:
        patient -> Dice (NaN when that patient's truth and prediction are both empty).

    Raises:
        ValueError: a (patient, slice_index) pair occurs twice.
    """
    accumulator = VolumeDiceAccumulator()
    for patient, slice_index, pred, truth in records:
        accumulator.add(patient, slice_index, pred, truth)
    return accumulator.result()
