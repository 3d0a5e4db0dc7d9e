"""Inference on new scans: lesion masks per slice and per volume, and a table of lesion volumes.

The entry points (bundle/configs/inference.json and :func:`run_inference`): :func:`find_inputs`
finds kaggle_3m TIFF patient folders and 3-D volumes (NIfTI, NRRD, MetaImage, DICOM) under
``dataset_dir``; :class:`SliceDataset` feeds their slices, preprocessed as in training, to the
network; :class:`MaskWriter` writes each input's masks in its own format and
``lesion_volumes.csv``.

Per slice, as in training (the chain of train.json, :mod:`pipeline.inference.preprocessing`):
min-max scaling to [0, 1] over the slice (all channels together), resize to ``image_size`` (area).

- :mod:`pipeline.inference.inputs`: the inputs accepted, finding and reading them, and the decisions on
  volumes (slice axis, orientation, channels, bad volumes).
- :mod:`pipeline.inference.writers`: per-slice thresholding and the outputs written.
"""

from __future__ import annotations

import bisect
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
import torch
from monai.data import DataLoader
from monai.engines import SupervisedEvaluator
from monai.inferers import SimpleInferer
from monai.transforms import Activationsd, Compose

import transforms
from pipeline.inference.input_record import CHANNELS, InferenceInput
from pipeline.inference.inputs import find_inputs
from pipeline.inference.preprocessing import image_preprocessing
from pipeline.inference.volumes import read_volume
from pipeline.inference.writers import CSV_NAME, MaskWriter

__all__ = [
    "InferenceInput",
    "MaskWriter",
    "SliceDataset",
    "find_inputs",
    "read_volume",
    "run_inference",
    "tiff_preprocessing",
]


def tiff_preprocessing(image_size: int = 256) -> Compose:
    """The training preprocessing of an image (train.json ``deterministic_transforms``, image only).

    Args:
        image_size: side of the square the network sees. Default 256.
    """
    return image_preprocessing(image_size)


def _tiff_shape(path: Path) -> tuple[int, int]:
    with tifffile.TiffFile(path) as tif:
        page = tif.pages.first
        sizes = dict(zip(page.axes, page.shape))
    return sizes["Y"], sizes["X"]


class SliceDataset(torch.utils.data.Dataset):
    """The slices of all inputs, in input then slice order, preprocessed for the network.

    Items: ``{"image": (3, S, S) float32, "input": index into inputs, "slice": 0-based position,
    "height": H, "width": W}`` (H x W: the slice before resizing).

    Args:
        data: the inputs, from :func:`find_inputs`.
        transform: preprocessing of a TIFF record ``{"image": path}``.
        slice_transform: preprocessing of ``{"image": (3, H, W) array}``, a volume slice; it
            should be ``transform`` without its loading steps. Default: ``transform`` minus its
            first two transforms (LoadImaged, EnsureChannelFirstd), without metadata tracking.

    When ``transform`` is a Compose, a TIFF slice is loaded by its first two transforms (with
    MONAI's metadata, which EnsureChannelFirstd reads) and the rest is ``slice_transform``: the
    bundle's is a ``transforms.ComposeWithoutMeta``, as scaling and resizing a plain tensor
    skip MONAI's MetaTensor bookkeeping (about 8 of 20 ms per slice measured here), and the
    slice's size comes from the loaded array instead of a second read of the file.
    """

    def __init__(
        self,
        data: Sequence[InferenceInput],
        transform: Callable[[dict], dict],
        slice_transform: Callable[[dict], dict] | None = None,
    ) -> None:
        self.inputs = list(data)
        self.transform = transform
        if slice_transform is None:
            if not isinstance(transform, Compose):
                raise ValueError("slice_transform is required when transform is not a Compose")
            slice_transform = transforms.ComposeWithoutMeta(list(transform.transforms[2:]))
        self.slice_transform = slice_transform
        self.load = Compose(list(transform.transforms[:2])) if isinstance(transform, Compose) else None
        self.starts = np.cumsum([0] + [inp.n_slices for inp in self.inputs]).tolist()
        self._cached: tuple[int, np.ndarray] | None = None

    def __len__(self) -> int:
        return self.starts[-1]

    def _volume(self, index: int) -> np.ndarray:
        if self._cached is None or self._cached[0] != index:
            self._cached = None  # free the previous volume before reading the next one
            slices = read_volume(self.inputs[index])
            if len(slices) != self.inputs[index].n_slices:
                raise ValueError(
                    f"{self.inputs[index].path}: read {len(slices)} slices, its header says "
                    f"{self.inputs[index].n_slices}"
                )
            self._cached = (index, slices)
        return self._cached[1]

    def __getitem__(self, item: int) -> dict[str, Any]:
        if not 0 <= item < len(self):
            raise IndexError(f"slice {item} out of range for {len(self)} slices")
        index = bisect.bisect_right(self.starts, item) - 1
        position = item - self.starts[index]
        inp = self.inputs[index]
        if inp.kind == "tiff":
            path = inp.slices[position]
            source: Path = path
            if self.load is not None:
                loaded = self.load({"image": str(path)})["image"]
                height, width = loaded.shape[1:]
                loaded = loaded.as_tensor() if hasattr(loaded, "as_tensor") else loaded
                image = self.slice_transform({"image": loaded})["image"]
            else:
                image = self.transform({"image": str(path)})["image"]
                height, width = _tiff_shape(path)
        else:
            raw = self._volume(index)[position]
            image = self.slice_transform({"image": raw})["image"]
            height, width = raw.shape[1:]
            source = inp.path
        if image.shape[0] != 3:
            raise ValueError(f"{source} has {image.shape[0]} channels: expected RGB slices ({CHANNELS})")
        return {"image": image, "input": index, "slice": position, "height": height, "width": width}


def run_inference(
    dataset_dir: str | os.PathLike,
    network: torch.nn.Module,
    output_dir: str | os.PathLike,
    image_size: int = 256,
    threshold: float = 0.5,
    device: str | torch.device = "cpu",
    batch_size: int = 8,
) -> Path:
    """Segment every input under ``dataset_dir`` and write the masks and lesion volumes.

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

    Returns:
        The path of ``lesion_volumes.csv``.
    """
    inputs = find_inputs(dataset_dir)
    dataset = SliceDataset(inputs, tiff_preprocessing(image_size))
    writer = MaskWriter(inputs, output_dir, threshold)
    evaluator = SupervisedEvaluator(
        device=torch.device(device),
        val_data_loader=DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0),
        network=network.to(device),
        inferer=SimpleInferer(),
        postprocessing=Activationsd(keys="pred", sigmoid=True),
        val_handlers=[writer],
    )
    evaluator.run()
    return Path(output_dir) / CSV_NAME
