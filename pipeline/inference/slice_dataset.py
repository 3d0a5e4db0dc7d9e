"""The slices of all inputs, preprocessed for the network: :class:`SliceDataset`.

Decisions (see also :mod:`pipeline.inference.workflow`): one volume is read and cached at a time;
an input that fails to read while the run goes on gives placeholder items (zeros, ``error``
set) so the run goes on; with train.json's ``intensity`` "volume" each slice is scaled by its
input's per-volume bounds (:mod:`pipeline.data.volume_stats`: from all the TIFF slices of a
patient, or from the volume as read), computed once per input, as training computed them; with
``crop`` "head" likewise the input's head box (:func:`pipeline.data.head_box.head_box`, the function
training's boxes come from), which each item carries so the writers map the masks back.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
import torch
from monai.transforms import Compose

import transforms
from pipeline.data.head_box import head_box
from pipeline.data.volume_stats import read_tiff_volume, volume_bounds
from pipeline.inference.fast_chain import fast_slice_chain
from pipeline.inference.input_record import CHANNELS, InferenceInput
from pipeline.inference.preprocessing import bounds_key, box_key
from pipeline.inference.volumes import read_volume


def _tiff_shape(path: Path) -> tuple[int, int]:
    with tifffile.TiffFile(path) as tif:
        page = tif.pages.first
        sizes = dict(zip(page.axes, page.shape))
    return sizes["Y"], sizes["X"]


class SliceDataset(torch.utils.data.Dataset):
    """The slices of all inputs, in input then slice order, preprocessed for the network.

    Items: ``{"image": (3, S, S) float32, "input": index into inputs, "slice": 0-based position,
    "height": H, "width": W, "error": ""}`` (H x W: the slice before resizing), and with crop "head"
    the input's box under the chain's box key (``"head_box"``: ``[top, left, bottom, right]``). A
    slice that cannot be read is a placeholder: zeros as image, ``error`` the reason naming the file
    (its box the whole placeholder).

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
    slice's size comes from the loaded array instead of a second read of the file. When the
    chain is train.json's, :mod:`pipeline.inference.fast_chain` computes the same numbers
    (within 1e-6) without MONAI's per-call overhead: the file read by the TiffReader's own
    function, the scaling and area resizing in numpy.
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
        # train.json's chain in a few numpy passes (the same numbers; None for any other chain)
        self.fast_tiff = fast_slice_chain(self.load, self.slice_transform) if self.load else None
        self.fast_slice = fast_slice_chain(None, self.slice_transform)
        counts = [0 if inp.error or inp.name in self.skip else inp.n_slices for inp in self.inputs]
        self.starts = np.cumsum([0, *counts]).tolist()
        self._cached: tuple[int, np.ndarray | str] | None = None
        self._placeholder: torch.Tensor | None = None
        # intensity "volume": the chain scales by the input's bounds, passed under this key
        self.bounds_key = bounds_key(self.slice_transform) or bounds_key(self.transform)
        # crop "head": the chain crops to the input's head box, passed under this key
        self.box_key = box_key(self.slice_transform) or box_key(self.transform)
        self._per_volume: dict[int, dict[str, Any]] = {}

    def _with_bounds(self, index: int, record: dict[str, Any]) -> dict[str, Any]:
        """``record`` plus what the chain wants of input ``index``'s whole volume: its per-volume
        intensity bounds, its head box (computed once per input, from one read of all its TIFF
        slices, or from the volume as read)."""
        if self.bounds_key is None and self.box_key is None:
            return record
        if index not in self._per_volume:
            inp = self.inputs[index]
            volume = read_tiff_volume(inp.slices) if inp.kind == "tiff" else self._volume(index)
            values: dict[str, Any] = {}
            if self.bounds_key is not None:
                values[self.bounds_key] = volume_bounds(volume)
            if self.box_key is not None:
                values[self.box_key] = head_box(volume)
            self._per_volume[index] = values
        return {**record, **self._per_volume[index]}

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
                self.slice_transform(
                    {
                        "image": torch.zeros(3, 8, 8),
                        **({self.bounds_key: [[0.0, 1.0]] * 3} if self.bounds_key else {}),
                        **({self.box_key: [0, 0, 8, 8]} if self.box_key else {}),
                    }
                )["image"]
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
            **({self.box_key: [0, 0, int(size[0]), int(size[1])]} if self.box_key else {}),
        }

    def _tiff_slice(self, index: int, path: Path) -> tuple[Any, int, int]:
        if self.fast_tiff is not None:
            array, height, width = self.fast_tiff.read_tiff(str(path))
            return self.fast_tiff(self._with_bounds(index, {"image": array}))["image"], height, width
        if self.load is not None:
            loaded = self.load({"image": str(path)})["image"]
            height, width = loaded.shape[1:]
            loaded = loaded.as_tensor() if hasattr(loaded, "as_tensor") else loaded
            return self.slice_transform(self._with_bounds(index, {"image": loaded}))["image"], height, width
        return self.transform(self._with_bounds(index, {"image": str(path)}))["image"], *_tiff_shape(path)

    def __getitem__(self, item: int) -> dict[str, Any]:
        if not 0 <= item < len(self):
            raise IndexError(f"slice {item} out of range for {len(self)} slices")
        index = bisect.bisect_right(self.starts, item) - 1
        position = item - self.starts[index]
        inp = self.inputs[index]
        if inp.kind == "tiff":
            source: Path = inp.slices[position]
            try:
                image, height, width = self._tiff_slice(index, source)
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
            chain = self.fast_slice or self.slice_transform
            image = chain(self._with_bounds(index, {"image": raw}))["image"]
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
            **({self.box_key: list(self._per_volume[index][self.box_key])} if self.box_key else {}),
        }
