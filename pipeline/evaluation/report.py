"""Evaluation as the paper does it: slices restacked per patient, metrics per patient volume.

``bundle/configs/evaluate.json`` runs a MONAI SupervisedEvaluator whose inferer is
:class:`pipeline.evaluation.tta.FlipTTAInferer` (two output channels: the plain logits and the
horizontal-flip test-time augmented logits) and whose handler ``EvaluationReport`` collects
every slice. When the evaluator completes, the report evaluates each post-processing option
(threshold, + largest component, flip test-time augmentation, both:
:mod:`pipeline.evaluation.volume_evaluation`) with Dice, IoU, HD95 and the false-positive and
detection figures, and writes ``summary.json`` (per-case records naming the image files, then
aggregates, sorted keys), ``per_slice.csv`` and pictures, and logs them to MLflow.
"""

from __future__ import annotations

import csv
import io
import logging
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events

from pipeline.atomic import write_json, write_text
from pipeline.evaluation import detection, metrics, uncertainty_validation
from pipeline.evaluation.uncertainty import DEFAULT_MC_SAMPLES, check_mc_samples, uncertainty_method
from pipeline.evaluation.volume_evaluation import evaluate_volumes

logger = logging.getLogger(__name__)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


class EvaluationReport:
    """Collect evaluated slices per patient and report per-volume metrics for each option.

    Args:
        output_dir: where summary.json, per_slice.csv and the pictures go.
        threshold: probability threshold, default 0.5.
        checkpoint: path of the evaluated checkpoint (recorded in summary.json). Default None.
        tracking: an object with ``log_evaluation(summary, files)`` (``EvaluationTracking``)
            or None. Default None.
        pictures: write the PNG pictures. Default True.
        n_picture_slices: slices with lesions shown in the grid. Default 8.
        min_component_voxels: the smallest 3-D component that calls a patient positive (detected).
            Default ``detection.DEFAULT_MIN_COMPONENT_VOXELS`` (10).
        voxel_spacing_mm: (slice, row, column) size in mm of the evaluated voxels (after the resize
            to image_size), for volumes in mL and HD95 in mm. Default None: voxels and pixels.
        uncertainty: the inferer's ``uncertainty`` (None, "tta", "mc_dropout", "ensemble"),
            recorded in summary.json; the scores are evaluated when the inferer gives the maps
            (:mod:`pipeline.evaluation.uncertainty_validation`). Default None.
        mc_samples: the inferer's ``mc_samples``, recorded. Default 8.
        uncertainty_flag_rate: share of patients flagged when ``uncertainty_threshold`` is None.
            Default 0.2.
        uncertainty_threshold: flag above this score. Default None: chosen by the flag rate.
    """

    def __init__(
        self,
        output_dir: str,
        threshold: float = 0.5,
        checkpoint: str | None = None,
        tracking: Any = None,
        pictures: bool = True,
        n_picture_slices: int = 8,
        min_component_voxels: int = detection.DEFAULT_MIN_COMPONENT_VOXELS,
        voxel_spacing_mm: list[float] | None = None,
        uncertainty: str | None = None,
        mc_samples: int = DEFAULT_MC_SAMPLES,
        uncertainty_flag_rate: float = uncertainty_validation.DEFAULT_FLAG_RATE,
        uncertainty_threshold: float | None = None,
    ) -> None:
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"threshold must be in (0, 1), not {threshold}")
        self.min_component_voxels = detection.check_min_component_voxels(min_component_voxels)
        detection.voxel_volume_ml(voxel_spacing_mm)  # reject a bad spacing now, not after the evaluation
        self.voxel_spacing_mm = voxel_spacing_mm
        self.output_dir = Path(output_dir)
        self.threshold = threshold
        self.checkpoint = checkpoint
        self.tracking = tracking
        self.pictures = pictures
        self.n_picture_slices = n_picture_slices
        self.uncertainty = {
            "method": uncertainty_method(uncertainty),
            "mc_samples": check_mc_samples(mc_samples),
            "flag_rate": uncertainty_validation.check_flag_rate(uncertainty_flag_rate),
            "threshold": uncertainty_validation.check_score_threshold(uncertainty_threshold),
        }
        self.slices: dict[str, dict[int, dict]] = defaultdict(dict)
        self.summary: dict | None = None

    def attach(self, engine: Engine) -> None:
        if not engine.has_event_handler(self.iteration_completed, Events.ITERATION_COMPLETED):
            engine.add_event_handler(Events.STARTED, lambda _: self.slices.clear())
            engine.add_event_handler(Events.ITERATION_COMPLETED, self.iteration_completed)
            engine.add_event_handler(Events.COMPLETED, self.completed)

    def iteration_completed(self, engine: Engine) -> None:
        for output, batch in zip(engine.state.output, engine.state.batch):
            logits = torch.as_tensor(output["pred"]).detach().float().cpu().numpy()
            patient, index = str(batch["patient"]), int(batch["slice"])
            if index in self.slices[patient]:
                raise ValueError(
                    f"slice {index} of patient {patient} was evaluated twice; check the datalist"
                )
            # the output's image: with crop "head" the postprocessing maps it back (transforms.HeadUncropd)
            image = torch.as_tensor(output.get("image", batch["image"])).detach().cpu().numpy()
            self.slices[patient][index] = {
                "prob": _sigmoid(logits[0]).astype(np.float32),
                "prob_tta": _sigmoid(logits[1]).astype(np.float32),
                "truth": torch.as_tensor(output["label"]).detach().cpu().numpy()[0] > 0.5,
                "flair": (np.clip(image[1 if image.shape[0] > 1 else 0], 0, 1) * 255).astype(np.uint8),
                "image_file": str(batch.get("image_file", "")),
                "label_file": str(batch.get("label_file", "")),
            }
            if logits.shape[0] > 2:  # the uncertainty maps: variance, entropy, votes
                self.slices[patient][index].update(
                    entropy=logits[3].astype(np.float16), votes=logits[4].astype(np.float16)
                )

    def completed(self, engine: Engine | None = None) -> dict:
        if not self.slices:
            raise ValueError("EvaluationReport: no slice was evaluated; is the evaluation datalist empty?")
        self.output_dir.mkdir(parents=True, exist_ok=True)
        summary, rows = evaluate_volumes(
            self.slices,
            self.threshold,
            self.min_component_voxels,
            self.voxel_spacing_mm,
            self.uncertainty["flag_rate"],
            self.uncertainty["threshold"],
        )
        if self.uncertainty["method"] is not None:
            summary["uncertainty"] = dict(self.uncertainty, note=uncertainty_validation.NOTE)
        summary["checkpoint"] = self.checkpoint
        summary["created"] = time.strftime("%Y-%m-%dT%H:%M:%S")
        files = {"summary": self.output_dir / "summary.json", "per_slice": self.output_dir / "per_slice.csv"}
        write_json(files["summary"], summary)
        _write_csv(files["per_slice"], rows)
        if self.pictures:
            files.update(self._pictures(summary))
        for name, variant in summary["aggregates"].items():
            dice = variant["dice"]
            logger.info(
                "%-14s per-volume Dice mean %s median %s over %d patients (%d with both masks empty), "
                "mean %s over patients with a lesion; sensitivity %s, specificity %s, false-positive "
                "voxels per lesion-free patient %s",
                name,
                _text(dice["mean"]),
                _text(dice["median"]),
                dice["n_total"],
                dice["n_undefined"],
                _text(variant["lesion_dice"]["mean"]),
                _text(variant["sensitivity"]),
                _text(variant["specificity"]),
                _text(variant["fp_voxels_lesion_free"]["mean"], ".0f"),
            )
        uncertainty_validation.log_figures(summary)
        if self.tracking is not None:
            self.tracking.log_evaluation(summary, files)
        self.summary = summary
        return summary

    def _pictures(self, summary: dict) -> dict[str, Path]:
        from pipeline.evaluation import figures

        out = {}
        samples = []
        flat = [(p, i, s) for p in sorted(self.slices) for i, s in sorted(self.slices[p].items())]
        labels = [s["truth"] for _, _, s in flat]
        patients = [p for p, _, _ in flat]
        for k in figures.pick_lesion_slices(labels, patients=patients, n=self.n_picture_slices, seed=0):
            patient, index, s = flat[k]
            pred = s["prob"] > self.threshold
            dice = metrics.dice(pred, s["truth"])
            image = np.repeat((s["flair"].astype(np.float32) / 255.0)[None], 3, axis=0)
            samples.append(
                {
                    "image": image,
                    "label": s["truth"],
                    "pred": pred,
                    "title": f"{patient} slice {index} Dice {dice:.2f}",
                }
            )
        if samples:
            out["grid"] = figures.prediction_grid(samples, self.output_dir / "predictions.png")
        shown = {c["patient"]: c["metrics"]["threshold"] for c in summary["cases"]}
        per_patient = {k: (np.nan if v["dice"] is None else v["dice"]) for k, v in shown.items()}
        lesion_free_fp = {k: v["fp_voxels"] for k, v in shown.items() if not v["has_lesion"]}
        out["dice_chart"] = figures.dice_bar_chart(
            per_patient, self.output_dir / "per_patient_dice.png", lesion_free_fp=lesion_free_fp
        )
        return out


def _text(value: float | None, spec: str = ".4f") -> str:
    return "n/a" if value is None else format(value, spec)


def _write_csv(path: Path, rows: list[dict]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, buffer.getvalue())


def evaluation_records(prepared: Any, eval_set: str = "val") -> list[dict]:
    """The records to evaluate, each with ``image_file`` and ``label_file`` for the report.

    Args:
        prepared: ``pipeline.data.prepare.PreparedData``.
        eval_set: "val" (the validation patients of the split) or "all" (every patient).
    """
    if eval_set not in ("val", "all"):
        raise ValueError(f"eval_set must be 'val' or 'all', not {eval_set!r}")
    records = (
        prepared.val
        if eval_set == "val"
        else sorted(prepared.train + prepared.val, key=lambda r: (r["patient"], r["slice"]))
    )
    return [dict(r, image_file=r["image"], label_file=r["label"]) for r in records]
