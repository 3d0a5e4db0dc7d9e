"""Flip test-time augmentation for inference (inference.json ``tta``), the same as evaluate.json's.

With ``tta`` true the network's logits are ``(network(x) + flip(network(flip(x)))) / 2`` (flip
over the image columns), computed by :class:`pipeline.evaluation.tta.FlipTTAInferer`, whose
second channel is what evaluate.json reports as its ``tta`` options: inference with ``--tta true``
writes the masks whose per-volume Dice the evaluation's ``tta`` row measured. The average is of
the logits, then the sigmoid; it costs a second forward pass per slice.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from monai.inferers import Inferer

from pipeline.evaluation.tta import FlipTTAInferer
from pipeline.flags import truthy


class FlipTTA(Inferer):
    """One logit channel: the network's (``tta`` false) or its horizontal-flip average (true).

    Args:
        tta: average with the flipped slice's logits. Default False. The strings of the bundle
            command line ("true", "false") are accepted.
    """

    def __init__(self, tta: bool | str = False) -> None:
        super().__init__()
        self.tta = truthy(tta)
        self.flip = FlipTTAInferer(tta=True)

    def __call__(
        self, inputs: torch.Tensor, network: Callable[..., torch.Tensor], *args, **kwargs
    ) -> torch.Tensor:
        if not self.tta:
            return network(inputs, *args, **kwargs)
        return self.flip(inputs, network, *args, **kwargs)[:, 1:]
