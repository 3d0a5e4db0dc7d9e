"""Inference on new scans: lesion masks per slice and per volume, lesion volumes and a report.

The entry points (bundle/configs/inference.json and :func:`run_inference`): :func:`find_inputs`
finds kaggle_3m TIFF patient folders and 3-D volumes (NIfTI, NRRD, MetaImage, DICOM) under
``dataset_dir``; :class:`SliceDataset` feeds their slices, preprocessed as in training, to the
network; :class:`MaskWriter` writes each input's masks in its own format (and a DICOM
Segmentation for DICOM FLAIR), ``lesion_volumes.csv``, ``report.html`` and ``failures.csv``.

Decisions on the run (the engine stays MONAI's SupervisedEvaluator):

- Memory: one volume is read and cached at a time (inputs come in order), and the writer frees
  an input's slices once it is written: a run of any size holds about one patient.
- A bad input does not stop the run. Inputs found unusable (:attr:`InferenceInput.error`) and
  inputs kept by ``skip_existing`` (``skip``) have no slices in the dataset. A volume that
  fails to read while the run goes on (a truncated file, a slice count that disagrees with its
  header, an unreadable TIFF slice) gives placeholder items: zeros as image, ``error`` set
  (the read is tried once per volume, not once per slice); the writer records the failure and
  writes nothing for that input. Every item has the key ``error`` ("" when read), so batches
  collate.
- At the end the writer raises :class:`pipeline.inference.run_summary.InferenceFailed` when an
  input failed, after all other outputs are written; ``python -m monai.bundle run`` then exits
  non-zero. An evaluator with no slice at all (everything kept or failed) fires no COMPLETED
  event: :meth:`MaskWriter.ensure_finished` after ``evaluator.run()`` writes the outputs then.

Per slice, as in training (the chain of train.json, or of the run's config.json given as
``training_config``: :mod:`pipeline.inference.preprocessing`): with ``intensity`` "slice" (the
tutorial's) min-max scaling to [0, 1] over the slice (all channels together), with "volume" the
patient's per-channel bounds (:mod:`pipeline.inference.slice_dataset`); resize to ``image_size``
(area).

- :mod:`pipeline.inference.inputs`: the inputs accepted, finding and reading them, and the decisions on
  volumes (slice axis, orientation, channels, bad volumes).
- :mod:`pipeline.inference.writers`: per-slice thresholding and the outputs written.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from monai.data import DataLoader
from monai.engines import SupervisedEvaluator
from monai.inferers import SimpleInferer
from monai.transforms import Compose

from pipeline.inference.input_record import InferenceInput
from pipeline.inference.inputs import find_inputs
from pipeline.inference.preprocessing import image_preprocessing
from pipeline.inference.run_summary import InferenceFailed
from pipeline.inference.slice_dataset import SliceDataset
from pipeline.inference.uncertainty import (
    DEFAULT_MC_SAMPLES,
    DEFAULT_SCORE,
    DEFAULT_THRESHOLD,
    UncertaintyInferer,
    mask_writer,
    postprocessing,
    uncertainty_method,
)
from pipeline.inference.volumes import read_volume
from pipeline.inference.writers import MaskWriter

__all__ = [
    "InferenceFailed",
    "InferenceInput",
    "MaskWriter",
    "SliceDataset",
    "find_inputs",
    "read_volume",
    "run_inference",
    "segment_inputs",
    "tiff_preprocessing",
]


def tiff_preprocessing(image_size: int = 256) -> Compose:
    """The training preprocessing of an image (train.json ``deterministic_transforms``, image only).

    Args:
        image_size: side of the square the network sees. Default 256.
    """
    return image_preprocessing(image_size)


def run_inference(
    dataset_dir: str | os.PathLike,
    network: torch.nn.Module,
    output_dir: str | os.PathLike,
    image_size: int = 256,
    threshold: float = 0.5,
    device: str | torch.device = "cpu",
    batch_size: int = 8,
    largest_component: bool = False,
    skip_existing: bool = False,
    report: bool = True,
    model_info: Mapping[str, Any] | None = None,
    sequence_patterns: Mapping[str, str | Sequence[str]] | None = None,
    allow_flair_only: bool = False,
    training_config: str | os.PathLike | Mapping | None = None,
    uncertainty: str | None = None,
    mc_samples: int = DEFAULT_MC_SAMPLES,
    uncertainty_score: str = DEFAULT_SCORE,
    uncertainty_threshold: float = DEFAULT_THRESHOLD,
) -> Path:
    """Segment every input under ``dataset_dir`` and write the masks, lesion volumes and report.

    The same engine as bundle/configs/inference.json: a SupervisedEvaluator over a
    :class:`SliceDataset`, sigmoid post-processing and a :class:`MaskWriter`.

    Args:
        dataset_dir: a folder of inputs or one volume file (see :mod:`pipeline.inference.inputs`).
        network: returns one logit channel, (B, 1, S, S) for (B, 3, S, S), weights loaded.
        output_dir: where the outputs go (created).
        image_size: side S of the network's input. Default 256.
        threshold: probability threshold. Default 0.5.
        device: default "cpu".
        batch_size: slices per forward pass. Default 8.
        largest_component: keep only each input's largest 3-D connected component. Default False.
        skip_existing: do not segment again the inputs whose outputs exist (resume). Default False.
        report: write ``report.html``. Default True.
        model_info: the model's identity for the report and DICOM Segmentations
            (:func:`pipeline.inference.model_identity.model_identity`). Default None: "unknown".
        sequence_patterns, allow_flair_only: how patient folders' sequences are found, and
            whether FLAIR alone is segmented (:func:`pipeline.inference.inputs.find_inputs`).
        training_config: the training config whose preprocessing chain is applied (a run's
            ``config.json``). Default None: bundle/configs/train.json.
        uncertainty: None (default: off), "tta", "mc_dropout" or "ensemble": also write each
            input's uncertainty map and scores (:mod:`pipeline.inference.uncertainty`).
        mc_samples: the passes of "mc_dropout". Default 8.
        uncertainty_score, uncertainty_threshold: an input is flagged when this score is above
            the threshold. Default "disagreement", 0.05.

    Returns:
        The path of ``lesion_volumes.csv``.

    Raises:
        InferenceFailed: some input could not be segmented (after all other outputs are written;
            ``failures.csv`` lists them).
    """
    return segment_inputs(
        find_inputs(dataset_dir, sequence_patterns=sequence_patterns, allow_flair_only=allow_flair_only),
        network,
        output_dir,
        image_size,
        threshold,
        device,
        batch_size,
        largest_component=largest_component,
        skip_existing=skip_existing,
        report=report,
        model_info=model_info,
        dataset_dir=dataset_dir,
        training_config=training_config,
        uncertainty=uncertainty,
        mc_samples=mc_samples,
        uncertainty_score=uncertainty_score,
        uncertainty_threshold=uncertainty_threshold,
    )


def segment_inputs(
    inputs: Sequence[InferenceInput],
    network: torch.nn.Module,
    output_dir: str | os.PathLike,
    image_size: int = 256,
    threshold: float = 0.5,
    device: str | torch.device = "cpu",
    batch_size: int = 8,
    training_config: str | os.PathLike | Mapping | None = None,
    uncertainty: str | None = None,
    mc_samples: int = DEFAULT_MC_SAMPLES,
    **writer_options: Any,
) -> Path:
    """:func:`run_inference` on inputs already found (``writer_options``: those of :class:`MaskWriter`
    and, with ``uncertainty``, of :class:`pipeline.inference.uncertainty.UncertaintyMaskWriter`)."""
    writer = mask_writer(inputs, output_dir, threshold, uncertainty=uncertainty, **writer_options)
    method = uncertainty_method(uncertainty)
    preprocessing = image_preprocessing(image_size, training_config)
    dataset = SliceDataset(inputs, preprocessing, skip=writer.skipped)
    evaluator = SupervisedEvaluator(
        device=torch.device(device),
        val_data_loader=DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0),
        network=network.to(device),
        inferer=SimpleInferer() if method is None else UncertaintyInferer(method, False, mc_samples),
        postprocessing=postprocessing("pred", method),
        decollate=False,  # the writer takes whole batches, as in inference.json
        val_handlers=[writer],
    )
    evaluator.run()
    return writer.ensure_finished()
