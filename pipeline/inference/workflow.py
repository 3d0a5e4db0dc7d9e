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

Per slice, as in training (the chain of train.json, :mod:`pipeline.inference.preprocessing`):
min-max scaling to [0, 1] over the slice (all channels together), resize to ``image_size`` (area).

- :mod:`pipeline.inference.inputs`: the inputs accepted, finding and reading them, and the decisions on
  volumes (slice axis, orientation, channels, bad volumes).
- :mod:`pipeline.inference.writers`: per-slice thresholding and the outputs written.
"""

from __future__ import annotations

import bisect
import os
from collections.abc import Callable, Collection, Mapping, Sequence
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
from pipeline.inference.run_summary import InferenceFailed
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


def _tiff_shape(path: Path) -> tuple[int, int]:
    with tifffile.TiffFile(path) as tif:
        page = tif.pages.first
        sizes = dict(zip(page.axes, page.shape))
    return sizes["Y"], sizes["X"]


class SliceDataset(torch.utils.data.Dataset):
    """The slices of all inputs, in input then slice order, preprocessed for the network.

    Items: ``{"image": (3, S, S) float32, "input": index into inputs, "slice": 0-based position,
    "height": H, "width": W, "error": ""}`` (H x W: the slice before resizing). A slice that
    cannot be read is a placeholder: zeros as image, ``error`` the reason naming the file.

    Args:
        data: the inputs, from :func:`find_inputs`.
        transform: preprocessing of a TIFF record ``{"image": path}``.
        slice_transform: preprocessing of ``{"image": (3, H, W) array}``, a volume slice; it
            should be ``transform`` without its loading steps. Default: ``transform`` minus its
            first two transforms (LoadImaged, EnsureChannelFirstd), without metadata tracking.
        skip: names of inputs to leave out (no slices), e.g. :attr:`MaskWriter.skipped`; inputs
            with an ``error`` are always left out.

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
        skip: Collection[str] = (),
    ) -> None:
        self.inputs = list(data)
        self.skip = frozenset(skip)
        self.transform = transform
        if slice_transform is None:
            if not isinstance(transform, Compose):
                raise ValueError("slice_transform is required when transform is not a Compose")
            slice_transform = transforms.ComposeWithoutMeta(list(transform.transforms[2:]))
        self.slice_transform = slice_transform
        self.load = Compose(list(transform.transforms[:2])) if isinstance(transform, Compose) else None
        counts = [0 if inp.error or inp.name in self.skip else inp.n_slices for inp in self.inputs]
        self.starts = np.cumsum([0, *counts]).tolist()
        self._cached: tuple[int, np.ndarray | str] | None = None
        self._placeholder: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.starts[-1]

    def _volume(self, index: int) -> np.ndarray | str:
        """The slices of input ``index``, or the error reading them (both cached: one volume at a time)."""
        if self._cached is None or self._cached[0] != index:
            self._cached = None  # free the previous volume before reading the next one
            try:
                slices: np.ndarray | str = read_volume(self.inputs[index])
                if len(slices) != self.inputs[index].n_slices:
                    slices = (
                        f"{self.inputs[index].path}: read {len(slices)} slices, its header says "
                        f"{self.inputs[index].n_slices}; is the file complete?"
                    )
            except Exception as error:  # the run goes on; the writer reports it
                slices = str(error) or f"cannot read {self.inputs[index].path}: {type(error).__name__}"
            self._cached = (index, slices)
        return self._cached[1]

    def _placeholder_item(self, index: int, position: int, error: str) -> dict[str, Any]:
        if self._placeholder is None:
            self._placeholder = torch.as_tensor(
                self.slice_transform({"image": torch.zeros(3, 8, 8)})["image"]
            )
            self._placeholder = torch.zeros_like(self._placeholder, dtype=torch.float32)
        size = self._placeholder.shape[-2:]
        return {
            "image": self._placeholder.clone(),
            "input": index,
            "slice": position,
            "height": int(size[0]),
            "width": int(size[1]),
            "error": error,
        }

    def _tiff_slice(self, path: Path) -> tuple[Any, int, int]:
        if self.load is not None:
            loaded = self.load({"image": str(path)})["image"]
            height, width = loaded.shape[1:]
            loaded = loaded.as_tensor() if hasattr(loaded, "as_tensor") else loaded
            return self.slice_transform({"image": loaded})["image"], height, width
        return self.transform({"image": str(path)})["image"], *_tiff_shape(path)

    def __getitem__(self, item: int) -> dict[str, Any]:
        if not 0 <= item < len(self):
            raise IndexError(f"slice {item} out of range for {len(self)} slices")
        index = bisect.bisect_right(self.starts, item) - 1
        position = item - self.starts[index]
        inp = self.inputs[index]
        if inp.kind == "tiff":
            source: Path = inp.slices[position]
            try:
                image, height, width = self._tiff_slice(source)
            except Exception as error:  # a truncated or unreadable slice: the run goes on
                reason = (str(error).strip().splitlines() or [""])[0]
                return self._placeholder_item(
                    index,
                    position,
                    f"cannot read {source}: {type(error).__name__}: {reason} (is the file complete?)",
                )
        else:
            volume = self._volume(index)
            if isinstance(volume, str):
                return self._placeholder_item(index, position, volume)
            raw = volume[position]
            image = self.slice_transform({"image": raw})["image"]
            height, width = raw.shape[1:]
            source = inp.path
        if image.shape[0] != 3:
            raise ValueError(f"{source} has {image.shape[0]} channels: expected RGB slices ({CHANNELS})")
        return {
            "image": image,
            "input": index,
            "slice": position,
            "height": height,
            "width": width,
            "error": "",
        }


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
    )


def segment_inputs(
    inputs: Sequence[InferenceInput],
    network: torch.nn.Module,
    output_dir: str | os.PathLike,
    image_size: int = 256,
    threshold: float = 0.5,
    device: str | torch.device = "cpu",
    batch_size: int = 8,
    **writer_options: Any,
) -> Path:
    """:func:`run_inference` on inputs already found (``writer_options``: those of :class:`MaskWriter`)."""
    writer = MaskWriter(inputs, output_dir, threshold, **writer_options)
    dataset = SliceDataset(inputs, tiff_preprocessing(image_size), skip=writer.skipped)
    evaluator = SupervisedEvaluator(
        device=torch.device(device),
        val_data_loader=DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0),
        network=network.to(device),
        inferer=SimpleInferer(),
        postprocessing=Activationsd(keys="pred", sigmoid=True),
        val_handlers=[writer],
    )
    evaluator.run()
    return writer.ensure_finished()
