"""The U-Net of the tutorial: five levels, 64 to 1024 filters, dropout inside every block."""

from __future__ import annotations

import math
import numbers

import torch
from torch import nn


def _conv_block(channels_in: int, channels_out: int, dropout: float) -> nn.Sequential:
    """conv3x3 - ReLU - Dropout - conv3x3 - ReLU, spatial size preserved (padding 1)."""
    return nn.Sequential(
        nn.Conv2d(channels_in, channels_out, kernel_size=3, padding=1),
        nn.ReLU(inplace=True),
        nn.Dropout(dropout),
        nn.Conv2d(channels_out, channels_out, kernel_size=3, padding=1),
        nn.ReLU(inplace=True),
    )


INITS = ("he", "pytorch")


def _check_arguments(
    channels_in: int, n_classes: int, depth: int, n_filters: int, dropout: float, init: str = "he"
) -> None:
    """Raise ValueError naming the first bad constructor argument and the value it got."""
    for name, value in (("channels_in", channels_in), ("n_classes", n_classes), ("depth", depth)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, not {value!r}")
    if isinstance(n_filters, bool) or not isinstance(n_filters, numbers.Integral) or n_filters < 0:
        raise ValueError(
            "n_filters must be an integer >= 0 (the first level has 2**n_filters channels), "
            f"not {n_filters!r}"
        )
    if isinstance(dropout, bool) or not isinstance(dropout, numbers.Real) or not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be a probability in [0, 1), not {dropout!r}")
    if init not in INITS:
        raise ValueError(f"init must be one of {', '.join(map(repr, INITS))}, not {init!r}")


class UNet(nn.Module):
    """The U-Net of Keydana (2020), after Ronneberger, Fischer & Brox (2015), for 2-D slices.

    Level ``i`` (``i = 0 .. depth-1``) has ``2**(n_filters + i)`` filters: 64, 128, 256, 512, 1024
    at the defaults. Every block is conv3x3 (padding 1) - ReLU - Dropout - conv3x3 (padding 1) -
    ReLU. The encoder goes down with 2x2 max-pooling; the decoder goes up with a 2x2 transposed
    convolution of stride 2 that halves the channels, concatenates the upsampled features with the
    encoder's output of the same level (the skip, in this order) and applies a block. A 1x1
    convolution maps to ``n_classes`` logits: the network applies no sigmoid (the loss and the
    post-processing do). 31,031,745 parameters at the defaults.

    The module scripts with ``torch.jit.script`` and traces with ``torch.export`` (dynamic batch,
    H and W). A scripted module raises its input-shape errors as ``torch.jit.Error`` carrying the
    same message.

    References:
        S. Keydana, "Brain image segmentation with torch", RStudio AI Blog, 2020.
        O. Ronneberger, P. Fischer, T. Brox, "U-Net: Convolutional Networks for Biomedical Image
        Segmentation", MICCAI 2015, LNCS 9351:234-241, arXiv:1505.04597.

    Args:
        channels_in: input channels (pre-contrast T1, FLAIR, post-contrast T1). Default 3.
        n_classes: output channels (logits). Default 1.
        depth: number of levels, including the bottleneck. Default 5.
        n_filters: log2 of the filters of the first level. Default 6 (64 filters).
        dropout: dropout probability inside every block, in [0, 1). Default 0.6.
        init: weight initialisation. "he" (default): the U-Net paper's, a Gaussian of standard
            deviation sqrt(2 / N) for every 3x3 convolution (each is followed by a ReLU; N =
            in_channels x 9 incoming connections), sqrt(1 / in_channels) for the transposed
            convolutions (no ReLU follows; each output pixel has in_channels incoming
            connections), zero biases; the 1x1 head keeps PyTorch's default. The second
            convolution of a block follows its Dropout(p), which in training mode scales what
            it keeps by 1 / (1 - p) and so raises the mean square by that factor: its variance
            is multiplied by (1 - p) to keep the signal's scale (without this, the full network's
            initial logits had a standard deviation of 22 in training mode at dropout 0.6).
            "pytorch": PyTorch's default everywhere (what the tutorial's R torch also uses),
            whose smaller weights divide the mean square by about 6 at every ReLU convolution:
            the demo network (8 filters, no dropout) then settled on all-background from the
            first epoch for seed 1 of 6 seeds tried (Dice 0); with "he" that seed reached
            per-volume Dice 0.862 and seed 0 0.865 (0.846 with "pytorch"), 10 demo epochs each.

    Raises:
        ValueError: an argument out of range (the message names it and the value it got).
    """

    def __init__(
        self,
        channels_in: int = 3,
        n_classes: int = 1,
        depth: int = 5,
        n_filters: int = 6,
        dropout: float = 0.6,
        init: str = "he",
    ) -> None:
        super().__init__()
        _check_arguments(channels_in, n_classes, depth, n_filters, dropout, init)
        self.channels_in = int(channels_in)
        self.n_classes = int(n_classes)
        self.depth = int(depth)
        self.n_filters = int(n_filters)
        self.dropout = float(dropout)
        self.size_multiple = 2 ** (self.depth - 1)
        filters = [2 ** (self.n_filters + i) for i in range(self.depth)]
        self.down = nn.ModuleList()
        previous = self.channels_in
        for level_filters in filters:
            self.down.append(_conv_block(previous, level_filters, self.dropout))
            previous = level_filters
        self.pool = nn.MaxPool2d(kernel_size=2, stride=2)
        # Decoder modules are stored bottom-up: index 0 joins the bottleneck with level depth-2.
        self.upsample = nn.ModuleList()
        self.up = nn.ModuleList()
        for level in range(self.depth - 2, -1, -1):
            self.upsample.append(
                nn.ConvTranspose2d(filters[level + 1], filters[level], kernel_size=2, stride=2)
            )
            self.up.append(_conv_block(2 * filters[level], filters[level], self.dropout))
        self.head = nn.Conv2d(filters[0], self.n_classes, kernel_size=1)
        self.init = init
        if init == "he":
            self._he_init()

    def _he_init(self) -> None:
        """The "he" initialisation of the class docstring."""
        keep = 1.0  # 1 - p of a Dropout(p) right before the next convolution
        for module in self.modules():
            if isinstance(module, nn.Dropout):
                keep = 1.0 - module.p
                continue
            if module is self.head:
                continue
            if isinstance(module, nn.ConvTranspose2d):
                std = math.sqrt(1.0 / module.in_channels)  # kernel 2, stride 2: taps do not overlap
            elif isinstance(module, nn.Conv2d):
                kh, kw = module.kernel_size
                std = math.sqrt(2.0 * keep / (module.in_channels * kh * kw))
            else:
                continue
            keep = 1.0
            nn.init.normal_(module.weight, 0.0, std)
            nn.init.zeros_(module.bias)

    def train(self, mode: bool = True) -> UNet:
        """nn.Module.train, skipped when every submodule is already in ``mode``.

        MONAI's SupervisedTrainer calls ``network.train()`` before every step; the recursive
        attribute setting over the 60-odd submodules cost about 0.5 ms per step, which is
        measurable at the demo size (a 70 ms step).
        """
        if all(module.training == mode for module in self.modules()):
            return self
        return super().train(mode)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of every pixel.

        Args:
            x: images of shape (N, channels_in, H, W), H and W divisible by 2**(depth-1)
                (16 at the default depth 5).

        Returns:
            Logits of shape (N, n_classes, H, W).

        Raises:
            ValueError: ``x`` is not 4-D, has the wrong number of channels, or H or W is not
                divisible by 2**(depth-1).
        """
        if x.dim() != 4:
            raise ValueError(
                f"UNet expects input of shape (N, {self.channels_in}, H, W), "
                f"got {x.dim()}-D shape {list(x.shape)}"
            )
        if x.shape[1] != self.channels_in:
            raise ValueError(
                f"UNet expects {self.channels_in} input channels, got shape {list(x.shape)} "
                f"(expected (N, {self.channels_in}, H, W))"
            )
        if x.shape[2] % self.size_multiple != 0 or x.shape[3] % self.size_multiple != 0:
            raise ValueError(
                f"UNet of depth {self.depth} needs H and W divisible by {self.size_multiple} "
                f"(2**(depth-1)), got shape {list(x.shape)}: pad or crop the input"
            )
        skips: list[torch.Tensor] = []
        for level, block in enumerate(self.down):
            if level > 0:
                skips.append(x)
                x = self.pool(x)
            x = block(x)
        for upsample, block in zip(self.upsample, self.up):
            x = block(torch.cat([upsample(x), skips.pop()], dim=1))
        return self.head(x)
