"""Horizontal-flip test-time augmentation, the one evaluate.json measures and inference.json applies.

:class:`FlipTTAInferer` gives both at once, as two logit channels, so that one evaluation pass
scores the plain network and its flip average (evaluate.json's ``threshold`` and ``tta`` options);
:class:`pipeline.inference.tta.FlipTTA` takes the channel inference asked for. The average is of
the logits, then the sigmoid; the flipped pass is a second forward pass per slice. With
``uncertainty`` set it also gives the uncertainty maps of :mod:`pipeline.evaluation.uncertainty`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from monai.inferers import Inferer

from pipeline.evaluation.uncertainty import (
    DEFAULT_MC_SAMPLES,
    check_mc_samples,
    predict_with_samples,
    uncertainty_maps,
    uncertainty_method,
)
from pipeline.flags import truthy


class FlipTTAInferer(Inferer):
    """Logits of the network and of horizontal-flip test-time augmentation, as two channels.

    Channel 0 is ``network(x)``; channel 1 is the mean of ``network(x)`` and
    ``flip(network(flip(x)))`` (flip over the last axis, the image columns). Only for networks
    with one output channel. With ``uncertainty`` set, channels 2 to 4 are the maps
    (:data:`pipeline.evaluation.uncertainty.MAP_CHANNELS`: variance, entropy, votes) of its
    samples; the two logit channels are unchanged.

    Args:
        tta: compute the flipped pass; with False channel 1 repeats channel 0. Default True. The
            strings of the bundle command line ("true", "false") are accepted.
        uncertainty: None (default: no maps), "tta", "mc_dropout" or "ensemble"
            (:func:`pipeline.evaluation.uncertainty.uncertainty_method`).
        mc_samples: passes of "mc_dropout". Default 8.
        threshold: the probability threshold of the maps' ``votes``. Default 0.5.
    """

    def __init__(
        self,
        tta: bool = True,
        uncertainty: str | None = None,
        mc_samples: int = DEFAULT_MC_SAMPLES,
        threshold: float = 0.5,
    ) -> None:
        super().__init__()
        self.tta = truthy(tta)
        self.uncertainty = uncertainty_method(uncertainty)
        self.mc_samples = check_mc_samples(mc_samples)
        self.threshold = float(threshold)

    def __call__(
        self, inputs: torch.Tensor, network: Callable[..., torch.Tensor], *args, **kwargs
    ) -> torch.Tensor:
        plain, flip, samples = predict_with_samples(
            self.uncertainty, inputs, network, self.tta, self.mc_samples, *args, **kwargs
        )
        if plain.shape[1] != 1:
            raise ValueError(f"FlipTTAInferer expects a network with 1 output channel, got {plain.shape[1]}")
        channels = [plain, (plain + flip) / 2 if self.tta else plain]
        if samples is not None:
            channels.append(uncertainty_maps(samples, self.threshold))
        return torch.cat(channels, dim=1)
