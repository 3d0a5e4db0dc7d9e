"""A MONAI ImageReader for the TIFF slices of the kaggle_3m layout, backed by tifffile."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from os import PathLike
from pathlib import PurePath
from typing import Any

import numpy as np
import tifffile
from monai.data import ImageReader
from monai.utils import MetaKeys

from transforms.plain_tiff import read_plain_tiff

__all__ = ["TiffReadError", "TiffReader", "read_tiff"]

TIFF_SUFFIXES = (".tif", ".tiff")


class TiffReadError(ValueError):
    """A file with a TIFF name that tifffile cannot read: missing, truncated or not a TIFF at all."""


@dataclass(frozen=True)
class TiffSource:
    """A TIFF file named by :meth:`TiffReader.read`, decoded by :meth:`TiffReader.get_data`."""

    path: str


def read_tiff(path: str | PathLike) -> tuple[np.ndarray, str]:
    """Read the image of one TIFF file as tifffile stores it, rows and columns untouched.

    Args:
        path: the TIFF file.

    Returns:
        The array (dtype as stored) and its tifffile axes string, e.g. ``"YXS"`` for an
        RGB slice (``S`` marks the samples, i.e. channels) or ``"YX"`` for a mask.

    Raises:
        TiffReadError: the file is missing, truncated or not a TIFF; the message names the file.

    A plain file (one page, uncompressed, 8-bit, the kaggle_3m kind) is read by
    :func:`transforms.plain_tiff.read_plain_tiff`, giving the same array and axes without
    tifffile's per-file parsing; any other file, or one it cannot read, goes to tifffile.
    """
    plain = read_plain_tiff(path)
    if plain is not None:
        return plain
    try:
        with tifffile.TiffFile(path) as tif:
            # one page is the common case and the fast one; a multi-page file is read as its first series
            if len(tif.pages) == 1:
                page = tif.pages.first
                return page.asarray(), page.axes
            series = tif.series[0]
            return series.asarray(), series.axes
    except FileNotFoundError as e:
        raise TiffReadError(f"cannot read {path}: expected a TIFF file, got no such file") from e
    except Exception as e:  # tifffile raises ValueError, IndexError, struct.error, ... on damaged files
        raise TiffReadError(
            f"cannot read {path}: expected a readable TIFF image, got {type(e).__name__}: {e} "
            "(is the file truncated or not a TIFF? re-export or re-download it)"
        ) from e


class TiffReader(ImageReader):
    """Load 2-D TIFF images (RGB slices and single-channel masks) with tifffile.

    Unlike MONAI's ITKReader and PILReader (whose default ``reverse_indexing`` swaps the
    first two axes), rows and columns stay in the order tifffile gives them: after
    ``LoadImaged`` + ``EnsureChannelFirstd`` an RGB file of shape (H, W, 3) becomes
    (3, H, W) with ``out[c, r, k] == tifffile.imread(f)[r, k, c]`` and a mask (H, W)
    becomes (1, H, W). The affine is the identity (pixel coordinates).

    Files are decoded in :meth:`get_data`, not in :meth:`read`: ``LoadImage`` silently tries
    its other readers when ``read`` fails, and PILReader then reports a damaged file without
    its name. Deferring the decoding makes this reader's error, which names the file, the one
    the user sees.

    Args:
        dtype: dtype of the returned array; ``None`` (the default) keeps the stored dtype.
            Note that ``LoadImaged`` converts to its own ``dtype`` (float32 by default) afterwards.
    """

    def __init__(self, dtype: np.dtype | type | str | None = None) -> None:
        super().__init__()
        self.dtype = None if dtype is None else np.dtype(dtype)

    def verify_suffix(self, filename: Sequence[PathLike | str] | PathLike | str) -> bool:
        """Whether every file name ends in ``.tif`` or ``.tiff`` (any case).

        Args:
            filename: a file name or a sequence of file names.
        """
        names = [filename] if isinstance(filename, str | PathLike) else filename
        return all(PurePath(name).suffix.lower() in TIFF_SUFFIXES for name in names)

    def read(
        self, data: Sequence[PathLike | str] | PathLike | str, **kwargs: Any
    ) -> TiffSource | list[TiffSource]:
        """Name the file or files to read; they are decoded by :meth:`get_data`.

        Args:
            data: a file name or a sequence of file names (stacked as channels by ``get_data``).
            kwargs: not supported; present for the ImageReader interface.

        Returns:
            One :class:`TiffSource` for one file, a list of them for a sequence.

        Raises:
            TypeError: reader options were passed.
        """
        if kwargs:
            raise TypeError(f"TiffReader.read takes no reader options, got {sorted(kwargs)}")
        if isinstance(data, str | PathLike):
            return TiffSource(str(data))
        return [TiffSource(str(name)) for name in data]

    def get_data(self, img: TiffSource | Sequence[TiffSource]) -> tuple[np.ndarray, dict]:
        """Decode the file(s) named by :meth:`read` and return the array and its metadata.

        Several files are stacked like MONAI's readers do: concatenated along their channel
        axis when they have one, otherwise stacked along a new first (channel) axis.

        Args:
            img: what :meth:`read` returned.

        Returns:
            The array (stored dtype unless ``dtype`` was given) and a dict with
            ``filename_or_obj``, ``spatial_shape``, ``original_channel_dim`` (the channel axis,
            -1 for an RGB file, ``nan`` when there is none) and identity ``affine`` and
            ``original_affine`` of size (spatial rank + 1).

        Raises:
            TiffReadError: a file is unreadable, or the files of a stack differ in shape.
        """
        sources = [img] if isinstance(img, TiffSource) else list(img)
        arrays, meta = [], {}
        for source in sources:
            array, axes = read_tiff(source.path)
            channel_dim = axes.find("S")
            spatial_shape = tuple(n for axis, n in zip(axes, array.shape) if axis != "S")
            if not meta:
                affine = np.eye(len(spatial_shape) + 1)
                meta = {
                    MetaKeys.SPATIAL_SHAPE: np.asarray(spatial_shape),
                    MetaKeys.ORIGINAL_CHANNEL_DIM: float("nan")
                    if channel_dim < 0
                    else channel_dim - len(axes),
                    MetaKeys.AFFINE: affine,
                    MetaKeys.ORIGINAL_AFFINE: affine.copy(),
                    "filename_or_obj": source.path,
                }
            elif array.shape != arrays[0].shape:
                raise TiffReadError(
                    f"cannot stack {source.path} with {sources[0].path}: expected the shape "
                    f"{arrays[0].shape}, got {array.shape}"
                )
            arrays.append(array)
        data = arrays[0] if len(arrays) == 1 else self._stack(arrays, meta)
        if self.dtype is not None:
            data = data.astype(self.dtype, copy=False)
        return data, meta

    @staticmethod
    def _stack(arrays: list[np.ndarray], meta: dict) -> np.ndarray:
        channel_dim = meta[MetaKeys.ORIGINAL_CHANNEL_DIM]
        if np.isnan(channel_dim):
            meta[MetaKeys.ORIGINAL_CHANNEL_DIM] = 0
            return np.stack(arrays, axis=0)
        return np.concatenate(arrays, axis=channel_dim)
