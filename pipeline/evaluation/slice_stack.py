"""Each patient's 3-D predicted and true masks, restacked from 2-D slices that arrive in any order.

What the validation metrics need for 3-D connected components (patient-level detection): per-slice
counts (:mod:`pipeline.evaluation.volume_dice`) are not enough. Masks are kept bit-packed (H*W/8
bytes a mask, nothing for an empty one), so a validation set's masks fit in memory and a
``state()`` can be sent with ``torch.distributed.all_gather_object``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from pipeline.evaluation.metrics import _binary_pair

# slice index -> ((H, W), packed prediction or None, packed truth or None)
SliceStackState = dict[str, dict[int, tuple[tuple[int, int], bytes | None, bytes | None]]]


def _pack(mask: np.ndarray) -> bytes | None:
    return np.packbits(mask).tobytes() if mask.any() else None


def _unpack(packed: bytes | None, shape: tuple[int, int]) -> np.ndarray:
    if packed is None:
        return np.zeros(shape, dtype=bool)
    bits = np.unpackbits(np.frombuffer(packed, dtype=np.uint8), count=math.prod(shape))
    return bits.reshape(shape).astype(bool)


class SliceStack:
    """Predicted and true slices per patient, restacked in slice-number order by ``volumes()``.

    ``merge`` adds another stack's ``state()``, so slices split over several processes restack to
    the same volumes as in one process.
    """

    def __init__(self) -> None:
        self._slices: SliceStackState = {}

    def add(self, patient: str, slice_index: int, pred: Any, truth: Any) -> None:
        """Keep one slice.

        Args:
            patient: patient id.
            slice_index: the slice's number within the patient.
            pred: predicted mask (H, W), boolean or 0/1.
            truth: true mask (H, W), same shape.

        Raises:
            ValueError: shapes differ or are not 2-D, or the slice was already added.
        """
        p, t = _binary_pair(pred, truth)
        if p.ndim != 2:
            raise ValueError(f"{patient} slice {slice_index}: expected (H, W) masks, got shape {p.shape}")
        self._put(str(patient), int(slice_index), ((int(p.shape[0]), int(p.shape[1])), _pack(p), _pack(t)))

    def _put(self, patient: str, slice_index: int, entry: tuple) -> None:
        slices = self._slices.setdefault(patient, {})
        if slice_index in slices:
            raise ValueError(f"{patient} slice {slice_index} was added twice: each slice must be added once")
        slices[slice_index] = entry

    def state(self) -> SliceStackState:
        """A copy of the packed slices: patient -> slice index -> ((H, W), pred bytes, truth bytes)."""
        return {patient: dict(slices) for patient, slices in self._slices.items()}

    def merge(self, other_state: Mapping[str, Mapping[int, tuple]]) -> None:
        """Add the slices of another stack's ``state()``.

        Raises:
            ValueError: a slice is in both (it would be counted twice); nothing is added then.
        """
        entries = [
            (str(patient), int(index), entry)
            for patient, slices in other_state.items()
            for index, entry in slices.items()
        ]
        for patient, index, _ in entries:
            if index in self._slices.get(patient, {}):
                raise ValueError(f"{patient} slice {index} is in both stacks: each slice must be added once")
        for patient, index, (shape, pred, truth) in entries:
            self._put(patient, index, (tuple(shape), pred, truth))

    def volumes(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """patient -> (pred, truth) boolean volumes (slices, H, W), slices in slice-number order.

        Raises:
            ValueError: the slices of a patient differ in shape.
        """
        out = {}
        for patient in sorted(self._slices):
            entries = [self._slices[patient][i] for i in sorted(self._slices[patient])]
            shapes = sorted({tuple(shape) for shape, _, _ in entries})
            if len(shapes) != 1:
                raise ValueError(
                    f"the slices of {patient} differ in shape ({shapes}): they cannot be stacked"
                )
            shape = shapes[0]
            out[patient] = (
                np.stack([_unpack(pred, shape) for _, pred, _ in entries]),
                np.stack([_unpack(truth, shape) for _, _, truth in entries]),
            )
        return out
