"""The peer pipeline of the benchmark: the training loop written the way the tutorial does it.

Plain PyTorch, no MONAI and no cache: a ``Dataset`` that reads each TIFF slice and its mask with
tifffile on every item, min-max scales the image, resizes both (area for the image,
nearest-neighbour for the mask) and augments per item with torch ops (zoom and rotation through
one ``affine_grid``/``grid_sample``, horizontal flip), a weighted sampler, and a bare loop of
forward, loss, backward and SGD step. The augmentation follows the recipe in README.md (zoom
0.95-1.05, rotation +-15 degrees, flip p=0.5, masks nearest-neighbour), so the peer does the
same work per sample as the bundle, minus the bundle's cache.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence

import numpy as np
import tifffile
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, WeightedRandomSampler

__all__ = ["TutorialSliceDataset", "tutorial_loader", "train_one_epoch"]


class TutorialSliceDataset(Dataset):
    """Slices read from disk and augmented on every access.

    Args:
        records: ``{"image": path, "label": path}`` per slice.
        size: side of the square network input.
        zoom: (lowest, highest) zoom factor. Default (0.95, 1.05).
        degrees: largest rotation in degrees either way. Default 15.
        flip_prob: probability of a horizontal flip. Default 0.5.
    """

    def __init__(
        self,
        records: Sequence[dict],
        size: int,
        zoom: tuple[float, float] = (0.95, 1.05),
        degrees: float = 15.0,
        flip_prob: float = 0.5,
    ) -> None:
        self.records = list(records)
        self.size = int(size)
        self.zoom = zoom
        self.degrees = float(degrees)
        self.flip_prob = float(flip_prob)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        record = self.records[index]
        image = torch.from_numpy(tifffile.imread(record["image"]).astype(np.float32)).permute(2, 0, 1)
        mask = torch.from_numpy((tifffile.imread(record["label"]) > 127).astype(np.float32))[None]
        low, high = image.min(), image.max()
        image = (image - low) / (high - low) if high > low else image - low
        image = F.interpolate(image[None], size=(self.size, self.size), mode="area")
        mask = F.interpolate(mask[None], size=(self.size, self.size), mode="nearest-exact")
        scale = float(torch.empty(()).uniform_(*self.zoom))
        angle = math.radians(float(torch.empty(()).uniform_(-self.degrees, self.degrees)))
        # output -> input coordinates: rotate by the angle and shrink by the zoom
        cos, sin = math.cos(angle) / scale, math.sin(angle) / scale
        theta = torch.tensor([[[cos, -sin, 0.0], [sin, cos, 0.0]]])
        grid = F.affine_grid(theta, list(image.shape), align_corners=False)
        image = F.grid_sample(image, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        mask = F.grid_sample(mask, grid, mode="nearest", padding_mode="zeros", align_corners=False)
        if float(torch.rand(())) < self.flip_prob:
            image, mask = image.flip(-1), mask.flip(-1)
        return {"image": image[0], "label": mask[0]}


def tutorial_loader(
    records: Sequence[dict],
    weights: Sequence[float] | np.ndarray,
    size: int,
    batch_size: int,
    num_workers: int,
) -> DataLoader:
    """The peer's DataLoader: weighted sampling with replacement, one epoch = len(records) draws."""
    sampler = WeightedRandomSampler(
        torch.as_tensor(np.asarray(weights), dtype=torch.double), len(records), replacement=True
    )
    return DataLoader(
        TutorialSliceDataset(records, size),
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
    )


def train_one_epoch(
    network: torch.nn.Module,
    loss_function: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    optimizer: torch.optim.Optimizer,
    loader: DataLoader,
) -> tuple[float, int]:
    """One epoch of the tutorial's loop; returns (seconds, samples)."""
    network.train()
    samples = 0
    start = time.perf_counter()
    for batch in loader:
        optimizer.zero_grad(set_to_none=True)
        loss = loss_function(network(batch["image"]), batch["label"])
        loss.backward()
        optimizer.step()
        samples += batch["image"].shape[0]
    return time.perf_counter() - start, samples
