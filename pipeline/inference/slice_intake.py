"""The per-slice half of :class:`pipeline.inference.writers.MaskWriter`: slices in, masks per input.

:class:`SliceIntake` takes an evaluator's batches (:meth:`~SliceIntake.add_batch`), turns each
slice's probabilities into its mask in one go per batch (:mod:`~pipeline.inference.slice_masks`),
keeps them per input and calls ``self._complete(index)`` when an input's last slice has arrived.
The writer (its subclass) provides ``inputs``, ``skipped``, ``threshold``, ``report`` and
``_complete``, and writes the outputs.

Decisions: a slice flagged with ``error`` (a placeholder the dataset gave for an unreadable
volume or slice) or of another size than its input's first slice marks the input failed
(``errors``); slices of a kept input (``skip_existing``) are ignored, with one warning.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from pipeline.inference import report as report_html
from pipeline.inference.input_record import InferenceInput
from pipeline.inference.slice_masks import batch_masks, batch_thumbnails, uncropped_flairs

__all__ = ["SliceIntake"]

logger = logging.getLogger("pipeline.inference.writers")


class SliceIntake:
    """Collect slices into per-input masks (and FLAIR thumbnails for the report); see the module docstring."""

    inputs: list[InferenceInput]
    skipped: frozenset[str]
    threshold: float
    report: bool

    def start_intake(self) -> None:
        """Empty per-input holdings: masks, thumbnails, errors and slice counts."""
        self.pending: dict[int, np.ndarray] = {}
        self.flair: dict[int, np.ndarray] = {}
        self.errors: dict[int, str] = {}
        self.received: dict[int, int] = {}
        self._warned_skip = False

    def _complete(self, index: int) -> None:
        raise NotImplementedError

    def add_batch(
        self,
        indices: Sequence[int],
        positions: Sequence[int],
        probs: Any,
        heights: Sequence[int],
        widths: Sequence[int],
        flairs: Any = None,
        errors: Sequence[str] | None = None,
        boxes: Sequence | None = None,
    ) -> None:
        """Slices of one batch: ``probs`` (B, 1, S, S) (or B per-slice arrays) resized back to
        ``heights[k]`` x ``widths[k]`` and thresholded in one go (:mod:`~pipeline.inference.slice_masks`);
        ``flairs`` the network's FLAIR channel per slice (for the montage), ``errors[k]`` set for a
        placeholder slice that could not be read; ``boxes`` (crop "head") each slice's head box,
        which its probabilities and FLAIR cover and are mapped back through."""
        errors = list(errors or [""] * len(indices))
        sizes = list(zip(heights, widths))
        masks = batch_masks(probs, sizes, self.threshold, boxes)
        thumbs = [None] * len(indices)
        if flairs is not None and self.report:
            if boxes is not None:
                flairs = uncropped_flairs(flairs, boxes, sizes)
            thumbs = batch_thumbnails(flairs, report_html.THUMBNAIL)
        for k, index in enumerate(indices):
            self._receive(int(index), int(positions[k]), masks[k], thumbs[k], errors[k])

    def add(
        self,
        index: int,
        position: int,
        prob: Any,
        height: int,
        width: int,
        flair: Any = None,
        error: str = "",
        box: Sequence[int] | None = None,
    ) -> None:
        """One slice ((1, S, S) or (S, S) probabilities): :meth:`add_batch` of a batch of one."""
        self.add_batch(
            [index],
            [position],
            [prob],
            [height],
            [width],
            None if flair is None else [flair],
            [error],
            None if box is None else [box],
        )

    def _receive(self, index: int, position: int, mask: np.ndarray, thumb: Any, error: str) -> None:
        inp = self.inputs[index]
        if inp.name in self.skipped:
            if not self._warned_skip:
                logger.warning(
                    "skip_existing: slices of %s arrive although it is kept: pass "
                    "SliceDataset(skip=mask_writer.skipped) to save the time",
                    inp.name,
                )
                self._warned_skip = True
            return
        self.received[index] = self.received.get(index, 0) + 1
        if error:
            self.errors.setdefault(index, error)
        elif index not in self.errors:
            self._store(index, inp, position, mask, thumb)
        if self.received[index] == inp.n_slices:
            self._complete(index)

    def _store(self, index: int, inp: InferenceInput, position: int, mask: np.ndarray, thumb: Any) -> None:
        masks = self.pending.get(index)
        if masks is None:  # allocated once per input (setdefault would allocate for every slice)
            masks = self.pending[index] = np.zeros((inp.n_slices, *mask.shape), dtype=np.uint8)
        if masks.shape[1:] != mask.shape:
            self.errors[index] = (
                f"slice {position + 1} of {inp.path} is {mask.shape[0]} x {mask.shape[1]} pixels, the "
                f"first one {masks.shape[1]} x {masks.shape[2]}: a patient's slices must all have one size"
            )
            return
        masks[position] = mask
        if thumb is not None:
            thumbs = self.flair.get(index)
            if thumbs is None:
                thumbs = self.flair[index] = np.zeros((inp.n_slices, *thumb.shape), dtype=np.float16)
            if thumbs.shape[1:] == thumb.shape:
                thumbs[position] = thumb
