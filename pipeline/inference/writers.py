"""Writing the outputs of inference: masks per input, ``lesion_volumes.csv``, ``report.html``.

:class:`MaskWriter` collects the per-slice probabilities of an evaluator, a batch at a time
(:mod:`~pipeline.inference.slice_masks`): resized back to the slice's shape (bilinear) and
thresholded, lesion where sigmoid(logit) > ``threshold``. When an input's last slice arrives its
outputs are written (on a background thread where that pays: :mod:`~pipeline.inference.background`)
and its slices freed.

Outputs under ``output_dir``, each written to a temporary file beside it and renamed: per input
the mask in its (FLAIR's) geometry and, for a DICOM FLAIR series, a DICOM Segmentation
(:mod:`~pipeline.inference.mask_files`, :mod:`~pipeline.inference.dicom_seg`); ``lesion_volumes.csv``
(:mod:`~pipeline.inference.lesion_stats`); ``report.html`` and ``<name>_overlay.png``
(:mod:`~pipeline.inference.report`); ``failures.csv`` (:mod:`~pipeline.inference.run_summary`).

Decisions:

- ``largest_component`` (default False): keep only the largest 3-D face-connected component of
  an input's mask before anything is written (the paper's post-processing, evaluation's
  ``+lcc``): the mask files, the SEG, the CSV and the report all show the same mask.
- ``skip_existing`` (default False): an input whose outputs (volume mask, its TIFF slice masks,
  the SEG when due) all exist, with a volume mask of the input's slice count, is not segmented
  again (:attr:`MaskWriter.skipped`; give it to the SliceDataset as ``skip``). Its row is
  recomputed from the mask on disk (the CSV of an interrupted run is not written yet, and the
  file is what counts) and its report entry reuses ``<name>_overlay.png``. So an interrupted run
  resumes where it stopped. Slices of a skipped input that still arrive are ignored.
- A bad input never stops the run: an input with :attr:`InferenceInput.error`, a placeholder
  slice the dataset flags with ``error`` (a volume that failed to read), a slice of a different
  size than the input's first one, or an error while writing an input's outputs, records the
  input as failed; its outputs are not written (or not all), and :meth:`MaskWriter.finish`
  raises after writing everything else.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from ignite.engine import Engine, Events

from pipeline.flags import truthy
from pipeline.inference import report as report_html
from pipeline.inference.background import BackgroundJobs, background_pays
from pipeline.inference.dicom_seg import write_seg
from pipeline.inference.input_record import InferenceInput
from pipeline.inference.lesion_stats import lesion_row, postprocess, write_csv
from pipeline.inference.mask_files import (
    check_outputs,
    outputs_of,
    overlay_path,
    read_mask,
    seg_path,
    write_mask_files,
)
from pipeline.inference.run_summary import FAILURES_NAME, InferenceFailed, log_summary, write_failures
from pipeline.inference.slice_intake import SliceIntake
from pipeline.inference.slice_masks import engine_batch

__all__ = ["CSV_NAME", "FAILURES_NAME", "REPORT_NAME", "InferenceFailed", "MaskWriter"]

logger = logging.getLogger(__name__)

CSV_NAME = "lesion_volumes.csv"
REPORT_NAME = "report.html"


class MaskWriter(SliceIntake):
    """Collect the per-slice probabilities of an evaluator and write each input's outputs when complete.

    Attach it to the evaluator (``val_handlers``) or call :meth:`add_batch` and :meth:`finish` directly.

    Args:
        inputs: the inputs of the :class:`pipeline.inference.workflow.SliceDataset`, same order.
        output_dir: where the outputs go (created).
        threshold: lesion where the probability is above it, in (0, 1). Default 0.5.
        largest_component: keep only the largest 3-D connected component. Default False.
        skip_existing: do not segment again inputs whose outputs exist. Default False.
        report: write ``report.html`` and the overlays. Default True.
        model_info: the model's identity (:mod:`pipeline.inference.model_identity`), shown in
            the report and recorded in the DICOM Segmentations. Default None: all "unknown".
        dataset_dir: ``input_files`` in the CSV are relative to it. Default None: as found.
        background: write each input's outputs on a background thread while the next input is
            predicted (:mod:`~pipeline.inference.background`). Default "auto": when it pays
            (:func:`~pipeline.inference.background.background_pays` for the evaluator's device:
            a GPU, or a spare CPU core); otherwise on the evaluator's thread.

    Raises:
        ValueError: ``threshold`` out of range, or ``output_dir`` would overwrite input masks or
            make two inputs write the same file.
    """

    def __init__(
        self,
        inputs: Sequence[InferenceInput],
        output_dir: str | os.PathLike,
        threshold: float = 0.5,
        largest_component: bool = False,
        skip_existing: bool = False,
        report: bool = True,
        model_info: Mapping[str, Any] | None = None,
        dataset_dir: str | os.PathLike | None = None,
        background: bool | str = "auto",
    ):
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"threshold must be in (0, 1), not {threshold}")
        self.inputs = list(inputs)
        self.output_dir = Path(output_dir)
        self.threshold = float(threshold)
        self.largest_component = truthy(largest_component)
        self.skip_existing = truthy(skip_existing)
        self.report = truthy(report)
        self.model_info = dict(model_info or {})
        self.dataset_dir = None if dataset_dir is None else Path(dataset_dir)
        check_outputs(self.inputs, self.output_dir)
        self.failed: dict[str, str] = {inp.name: inp.error for inp in self.inputs if inp.error}
        self.rows: dict[str, dict] = {}
        self.entries: dict[str, dict] = {}
        for inp in self.inputs:
            if inp.error:
                self._entry(inp, "failed")
        self.start_intake()
        self.finished = False
        self.skipped = frozenset(self._carry_over() if self.skip_existing else ())
        self.started = time.perf_counter()
        self.background = background
        self.jobs = BackgroundJobs(self._background(None))

    def _entry(self, inp: InferenceInput, status: str, row: dict | None = None, **extra: Any) -> None:
        self.entries[inp.name] = {
            "name": inp.name,
            "status": status,
            "row": row,
            "substituted": list(inp.substituted),
            "flair_only": inp.flair_only,
            "error": self.failed.get(inp.name, ""),
            **extra,
        }

    def _carry_over(self) -> list[str]:
        """The inputs whose outputs exist: rows and report entries from the files on disk."""
        for inp in self.inputs:
            complete = not inp.error and all(p.is_file() for p in outputs_of(inp, self.output_dir))
            mask = read_mask(inp, self.output_dir) if complete else None  # one at a time
            if mask is not None:
                self.rows[inp.name] = lesion_row(inp, mask, self.dataset_dir)
                png, chosen = report_html.kept_overlay(overlay_path(inp, self.output_dir), mask, self.report)
                self._entry(inp, "kept", self.rows[inp.name], montage=png, slices=chosen)
        kept = [name for name, entry in self.entries.items() if entry["status"] == "kept"]
        if kept:
            logger.info("skip_existing: %d inputs already segmented in %s, kept", len(kept), self.output_dir)
        return kept

    def _background(self, device: Any) -> bool:
        auto = isinstance(self.background, str) and self.background.lower() == "auto"
        return background_pays(device) if auto else truthy(self.background)

    def attach(self, engine: Engine) -> None:
        if not engine.has_event_handler(self.iteration_completed, Events.ITERATION_COMPLETED):
            device = getattr(getattr(engine, "state", None), "device", None)
            self.jobs.drain()  # none submitted yet: the thread's use decided for this engine's device
            self.jobs = BackgroundJobs(self._background(device))
            engine.add_event_handler(Events.STARTED, lambda _: setattr(self, "started", time.perf_counter()))
            engine.add_event_handler(Events.ITERATION_COMPLETED, self.iteration_completed)
            engine.add_event_handler(Events.COMPLETED, lambda _: self.finish())
            engine.add_event_handler(Events.EXCEPTION_RAISED, self.exception_raised)

    def exception_raised(self, engine: Engine, error: BaseException) -> None:
        """The run dies: the inputs completed before are still written; then the error goes on."""
        try:
            self.jobs.drain()
        except Exception:  # the run's own error is the one to report
            logger.exception("Writing the outputs of an input failed while the run was ending")
        raise error

    def iteration_completed(self, engine: Engine) -> None:
        self.add_batch(*engine_batch(engine.state.batch, engine.state.output))

    def _complete(self, index: int) -> None:
        """Hand the input's outputs to the background thread; what its :meth:`_write` needs must be
        taken here (a subclass holding more per input passes it on, not in ``self``)."""
        inp = self.inputs[index]
        masks, thumbs = self.pending.pop(index, None), self.flair.pop(index, None)
        error = self.errors.pop(index, "")
        if error:
            self._record_failure(inp, error)
        else:  # written while the network goes on with the next input
            self.jobs.submit(lambda: self._write_or_record(inp, masks, thumbs))

    def _write_or_record(self, inp: InferenceInput, masks: np.ndarray, thumbs: np.ndarray | None) -> None:
        try:
            self._write(inp, masks, thumbs)
        except Exception as failure:  # the run goes on; finish() reports it
            logger.debug("Writing the outputs of %s failed", inp.name, exc_info=True)
            self._record_failure(inp, f"writing the outputs failed: {type(failure).__name__}: {failure}")

    def _record_failure(self, inp: InferenceInput, error: str) -> None:
        self.failed[inp.name] = error
        self._entry(inp, "failed")
        logger.error("%s not segmented: %s", inp.name, error)

    def _write(self, inp: InferenceInput, masks: np.ndarray, thumbs: np.ndarray | None) -> None:
        """Write the outputs of one input from its masks (n_slices, rows, columns), uint8 0/1."""
        mask = postprocess(masks, self.largest_component)
        out = write_mask_files(inp, mask, self.output_dir)
        seg = seg_path(inp, self.output_dir)
        if seg is not None:
            write_seg(seg, mask, inp.dicom_files, self.model_info, self.threshold, self.largest_component)
        row = lesion_row(inp, mask, self.dataset_dir)
        png, chosen = b"", []
        if self.report:
            png, chosen = report_html.new_overlay(overlay_path(inp, self.output_dir), thumbs, mask)
        self.rows[inp.name] = row
        self._entry(inp, "segmented", row, montage=png, slices=chosen)
        logger.info(
            "%s: %d lesion voxels in %d slices -> %s%s",
            inp.name,
            row["lesion_voxels"],
            inp.n_slices,
            out,
            f" and {seg.name}" if seg else "",
        )

    def ensure_finished(self) -> Path:
        """:meth:`finish` unless it ran: for a run whose evaluator had no slice to segment (every
        input kept or failed), which MONAI skips without firing COMPLETED."""
        return self.output_dir / CSV_NAME if self.finished else self.finish()

    def finish(self) -> Path:
        """Write ``lesion_volumes.csv``, ``report.html`` and ``failures.csv``; return the CSV's path.

        Raises:
            InferenceFailed: some input failed (after everything else is written).
        """
        self.finished = True
        self.jobs.drain()  # every input's outputs written before the CSV and report
        for index, inp in enumerate(self.inputs):
            if inp.name not in self.rows and inp.name not in self.failed:
                got = self.received.get(index, 0)
                self.failed[inp.name] = (
                    f"the run ended after {got} of its {inp.n_slices} slices were predicted; run again"
                )
                self._entry(inp, "failed")
        self.pending.clear()
        self.flair.clear()
        path = write_csv(self.output_dir / CSV_NAME, self.rows)
        if self.report:
            settings = dict(
                threshold=self.threshold,
                largest_component=self.largest_component,
                skip_existing=self.skip_existing,
                output_dir=self.output_dir,
            )
            entries = list(self.entries.values())
            report_html.write_report(self.output_dir / REPORT_NAME, entries, self.model_info, settings)
        failures = write_failures(self.output_dir, self.failed)
        segmented = sum(1 for e in self.entries.values() if e["status"] == "segmented")
        slices = sum(
            inp.n_slices for inp in self.inputs if inp.name in self.rows and inp.name not in self.skipped
        )
        log_summary(
            segmented, len(self.skipped), self.failed, slices, time.perf_counter() - self.started, path
        )
        if failures is not None:
            raise InferenceFailed(self.failed, failures)
        return path
