"""Uncertainty in inference (inference.json ``uncertainty``): a map beside each mask, a score per patient.

With ``uncertainty`` null (the default) nothing changes: :func:`inferer`, :func:`postprocessing`
and :func:`mask_writer` return inference's own :class:`~pipeline.inference.tta.FlipTTA`,
``Activationsd(sigmoid)`` and :class:`~pipeline.inference.writers.MaskWriter`, so the outputs and
the speed are those of a run without it. With "tta", "mc_dropout" or "ensemble" (the samples of
:mod:`pipeline.evaluation.uncertainty`):

- :class:`UncertaintyInferer` gives 1 + S channels per slice: the mask's logit (the run's own,
  with or without ``tta``: the uncertainty never changes the mask) and the S samples'
  probabilities; :class:`MaskSigmoidd` applies the sigmoid to the first only.
- :class:`UncertaintyMaskWriter` resizes every sample back to the slice's shape (bilinear, like
  the mask's probabilities) and computes the maps there
  (:func:`pipeline.evaluation.uncertainty.uncertainty_maps`, ``votes`` at the mask's threshold):
  each sample's mask is then made by the mask's own rule, so samples that agree give a variance
  map and a disagreement of exactly 0 at any resolution (resizing the maps instead would blur
  ``votes`` at every lesion border). When an input is complete it writes ``<name>_uncertainty.nii.gz`` (the
  variance) and ``<name>_uncertainty.json`` (:mod:`pipeline.inference.uncertainty_files`),
  computes the scores on the mask as written (after ``largest_component``), and adds to its
  ``lesion_volumes.csv`` row ``uncertainty_disagreement``, ``uncertainty_entropy`` (4 decimals)
  and ``uncertainty_flag`` ("true" when the score ``uncertainty_score`` is above
  ``uncertainty_threshold``), shown in ``report.html``. The maps are held per input like the
  masks (4 + 2 + 2 bytes a voxel) and freed with them.
- ``skip_existing`` keeps an input only when its map and scores file exist and were made by the
  same method; the flag is decided again with the current threshold.

The threshold is chosen on validation patients by evaluate.json (``uncertainty_<score>_threshold``
in summary.json: :mod:`pipeline.evaluation.uncertainty_validation`), for the same method.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.inferers import Inferer
from monai.transforms import Activationsd, MapTransform

from pipeline.evaluation.uncertainty import (
    DEFAULT_MC_SAMPLES,
    SCORES,
    check_mc_samples,
    patient_scores,
    predict_with_samples,
    uncertainty_maps,
    uncertainty_method,
)
from pipeline.evaluation.uncertainty_validation import check_score_threshold
from pipeline.flags import truthy
from pipeline.inference import uncertainty_files
from pipeline.inference.input_record import InferenceInput
from pipeline.inference.lesion_stats import postprocess
from pipeline.inference.tta import FlipTTA
from pipeline.inference.writers import MaskWriter
from transforms.crop import uncrop

logger = logging.getLogger(__name__)

DEFAULT_SCORE = "disagreement"
DEFAULT_THRESHOLD = 0.05  # the demo model's validation patients, flag rate 0.2 (README)
MIN_CHANNELS = 3  # the mask's probability, then at least 2 samples


class UncertaintyInferer(Inferer):
    """The mask's logit and the samples' probabilities, (B, 1 + S, H, W).

    Args:
        uncertainty: "tta", "mc_dropout" or "ensemble" (:mod:`pipeline.evaluation.uncertainty`).
        tta: the mask's logit is the flip average (inference's ``--tta``). Default False.
        mc_samples: passes of "mc_dropout". Default 8.

    Raises:
        ValueError: ``uncertainty`` null or unknown, or ``mc_samples`` below 2.
    """

    def __init__(
        self,
        uncertainty: str,
        tta: bool | str = False,
        mc_samples: int = DEFAULT_MC_SAMPLES,
    ) -> None:
        super().__init__()
        self.uncertainty = uncertainty_method(uncertainty)
        if self.uncertainty is None:
            raise ValueError("UncertaintyInferer needs an uncertainty method; use FlipTTA without one")
        self.tta = truthy(tta)
        self.mc_samples = check_mc_samples(mc_samples)

    def __call__(
        self, inputs: torch.Tensor, network: Callable[..., torch.Tensor], *args, **kwargs
    ) -> torch.Tensor:
        plain, flip, samples = predict_with_samples(
            self.uncertainty, inputs, network, self.tta, self.mc_samples, *args, **kwargs
        )
        mask = (plain + flip) / 2 if self.tta else plain
        return torch.cat([mask.float(), samples[:, :, 0].transpose(0, 1)], dim=1)


class MaskSigmoidd(MapTransform):
    """Sigmoid of channel 0 (the mask's logit) of each key; the others (samples' probabilities) kept.

    Args:
        keys: the keys to transform, e.g. "pred".
        allow_missing_keys: do not raise for a missing key. Default False.
    """

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):  # channels are axis -3 of one slice or of a batch
            values = d[key]
            d[key] = torch.cat([torch.sigmoid(values[..., :1, :, :]), values[..., 1:, :, :]], dim=-3)
        return d


def inferer(
    tta: bool | str = False,
    uncertainty: str | None = None,
    mc_samples: int = DEFAULT_MC_SAMPLES,
) -> Inferer:
    """inference.json's ``inferer``: :class:`FlipTTA` without ``uncertainty``, else
    :class:`UncertaintyInferer` (arguments as there)."""
    method = uncertainty_method(uncertainty)
    if method is None:
        return FlipTTA(tta)
    return UncertaintyInferer(method, tta, mc_samples)


def postprocessing(keys: str = "pred", uncertainty: str | None = None) -> MapTransform:
    """inference.json's ``postprocessing``: ``Activationsd(keys, sigmoid=True)`` without
    ``uncertainty``, else :class:`MaskSigmoidd`."""
    if uncertainty_method(uncertainty) is None:
        return Activationsd(keys=keys, sigmoid=True)
    return MaskSigmoidd(keys=keys)


class UncertaintyMaskWriter(MaskWriter):
    """:class:`MaskWriter` that also writes each input's uncertainty map and scores (module docstring).

    Args:
        inputs, output_dir, threshold: as for :class:`MaskWriter`.
        uncertainty: "tta", "mc_dropout" or "ensemble", the inferer's. Default "tta".
        uncertainty_score: the score flagged, one of "disagreement" (default) and "entropy".
        uncertainty_threshold: flag an input whose score is above it. Default 0.05.
        **options: the other arguments of :class:`MaskWriter`.

    Raises:
        ValueError: an unknown method or score, or a negative threshold (naming the key).
    """

    def __init__(
        self,
        inputs: Sequence[InferenceInput],
        output_dir: Any,
        threshold: float = 0.5,
        uncertainty: str = "tta",
        uncertainty_score: str = DEFAULT_SCORE,
        uncertainty_threshold: float = DEFAULT_THRESHOLD,
        **options: Any,
    ) -> None:
        self.method = uncertainty_method(uncertainty)
        if self.method is None:
            raise ValueError("UncertaintyMaskWriter needs an uncertainty method; use MaskWriter without one")
        if uncertainty_score not in SCORES:
            raise ValueError(
                f"uncertainty_score must be one of {', '.join(map(repr, SCORES))}, not {uncertainty_score!r}"
            )
        self.score = uncertainty_score
        self.score_threshold = check_score_threshold(uncertainty_threshold)
        if self.score_threshold is None:
            raise ValueError("uncertainty_threshold must be a number with uncertainty on, not null")
        self.samples: dict[str, int] = {}
        self.maps: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        super().__init__(inputs, output_dir, threshold, **options)

    def _carry_over(self) -> list[str]:
        kept = []
        for name in super()._carry_over():
            inp = next(i for i in self.inputs if i.name == name)
            scores = uncertainty_files.read_scores(inp, self.output_dir, self.method)
            if scores is None:  # made without uncertainty, or by another method: segmented again
                del self.rows[name], self.entries[name]
                logger.info(
                    "skip_existing: %s has no %s uncertainty map yet: segmented again", name, self.method
                )
                continue
            self._add_scores(inp, scores)
            kept.append(name)
        return kept

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
        """:meth:`MaskWriter.add_batch` of slices whose ``probs[k]`` is (1 + S, H, W): the mask's
        probability, then the samples' (their maps held for :meth:`_write`; with ``boxes``, crop
        "head", mapped back through each slice's box). A slice without samples fails its input,
        naming the inferer to use."""
        errors = list(errors or [""] * len(indices))
        for k, index in enumerate(indices):
            inp, values = self.inputs[int(index)], torch.as_tensor(probs[k])
            if values.ndim != 3 or values.shape[0] < MIN_CHANNELS:
                errors[k] = errors[k] or (
                    f"the inferer gave {tuple(values.shape)} per slice, uncertainty needs the mask and at "
                    "least 2 samples (pipeline.inference.uncertainty.inferer with the same uncertainty)"
                )
            elif inp.name not in self.skipped and not errors[k] and int(index) not in self.errors:
                box = None if boxes is None else boxes[k]
                self._store_maps(inp, int(positions[k]), values[1:], int(heights[k]), int(widths[k]), box)
        if isinstance(probs, torch.Tensor) and probs.ndim == 4:
            mask_probs = probs[:, :1]
        else:
            mask_probs = [torch.as_tensor(p)[:1] if torch.as_tensor(p).ndim == 3 else p for p in probs]
        super().add_batch(indices, positions, mask_probs, heights, widths, flairs, errors, boxes)
        for index in set(indices):  # an input that failed while reading frees its maps now
            if self.inputs[int(index)].name in self.failed:
                self.maps.pop(self.inputs[int(index)].name, None)
                self.samples.pop(self.inputs[int(index)].name, None)

    def _store_maps(
        self,
        inp: InferenceInput,
        position: int,
        samples: torch.Tensor,
        height: int,
        width: int,
        box: Sequence[int] | None = None,
    ) -> None:
        samples = samples.detach().float().cpu()[None]
        if box is not None:  # crop "head": the samples cover the head box
            samples = uncrop(samples, [box], (height, width), (height, width))
        elif tuple(samples.shape[-2:]) != (height, width):
            samples = torch.nn.functional.interpolate(
                samples, size=(height, width), mode="bilinear", align_corners=False
            )
        self.samples[inp.name] = samples.shape[1]
        maps = uncertainty_maps(samples.transpose(0, 1)[:, :, None], self.threshold)
        held = self.maps.get(inp.name)
        if held is None:
            shape = (inp.n_slices, height, width)
            held = (np.zeros(shape, np.float32), np.zeros(shape, np.float16), np.zeros(shape, np.float16))
            self.maps[inp.name] = held
        if held[0].shape[1:] != (height, width):
            return  # MaskWriter records the slice-size error
        for array, channel in zip(held, maps[0].numpy()):
            array[position] = channel

    def _write(self, inp: InferenceInput, masks: np.ndarray, thumbs: np.ndarray | None) -> None:
        variance, entropy, votes = self.maps.pop(inp.name)
        scores = patient_scores(postprocess(masks, self.largest_component), entropy, votes)
        uncertainty_files.write_map(inp, variance, self.output_dir)
        samples = self.samples.pop(inp.name, None)
        uncertainty_files.write_scores(inp, self.output_dir, self.method, samples, scores)
        super()._write(inp, masks, thumbs)
        self._add_scores(inp, scores)

    def _add_scores(self, inp: InferenceInput, scores: Mapping[str, Any]) -> None:
        flagged = scores[self.score] > self.score_threshold
        row = self.rows[inp.name]
        row.update({f"uncertainty_{name}": repr(round(float(scores[name]), 4)) for name in SCORES})
        row["uncertainty_flag"] = "true" if flagged else "false"
        self.entries[inp.name]["uncertainty"] = {
            "method": self.method,
            "score": self.score,
            "threshold": self.score_threshold,
            "value": float(scores[self.score]),
            "flagged": flagged,
            "map": uncertainty_files.map_path(inp, self.output_dir).name,
        }

    def finish(self) -> Path:
        try:  # after the background writes drained in MaskWriter.finish
            return super().finish()
        finally:
            self.maps.clear()
            self.samples.clear()


def mask_writer(
    inputs: Sequence[InferenceInput], output_dir: Any, threshold: float = 0.5, **options: Any
) -> MaskWriter:
    """inference.json's ``mask_writer``: :class:`MaskWriter` when ``options["uncertainty"]`` is null
    (or absent; the other ``uncertainty_*`` options are then ignored), else
    :class:`UncertaintyMaskWriter`."""
    method = uncertainty_method(options.pop("uncertainty", None))
    if method is None:
        for key in ("uncertainty_score", "uncertainty_threshold"):
            options.pop(key, None)
        return MaskWriter(inputs, output_dir, threshold, **options)
    return UncertaintyMaskWriter(inputs, output_dir, threshold, uncertainty=method, **options)
