"""Horizontal-flip test-time augmentation, the one evaluate.json measures and inference.json applies.

:class:`FlipTTAInferer` gives both at once, as two logit channels, so that one evaluation pass
scores the plain network and its flip average (evaluate.json's ``threshold`` and ``tta`` options);
:class:`pipeline.inference.tta.FlipTTA` takes the channel inference asked for. The average is of
the logits, then the sigmoid; the flipped pass is a second forward pass per slice.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from monai.inferers import Inferer


class FlipTTAInferer(Inferer):
    """Logits of the network and of horizontal-flip test-time augmentation, as two channels.

    Channel 0 is ``network(x)``; channel 1 is the mean of ``network(x)`` and
    ``flip(network(flip(x)))`` (flip over the last axis, the image columns). Only for networks
    with one output channel.

    Args:
        tta: compute the flipped pass; with False channel 1 repeats channel 0. Default True.
    """

    def __init__(self, tta: bool = True) -> None:
        super().__init__()
        self.tta = tta

    def __call__(
        self, inputs: torch.Tensor, network: Callable[..., torch.Tensor], *args, **kwargs
    ) -> torch.Tensor:
        plain = network(inputs, *args, **kwargs)
        if plain.shape[1] != 1:
            raise ValueError(f"FlipTTAInferer expects a network with 1 output channel, got {plain.shape[1]}")
        if not self.tta:
            return torch.cat([plain, plain], dim=1)
        flipped = torch.flip(network(torch.flip(inputs, dims=[-1]), *args, **kwargs), dims=[-1])
        return torch.cat([plain, (plain + flipped) / 2], dim=1)
