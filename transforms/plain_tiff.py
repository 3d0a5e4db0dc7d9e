"""Plain 8-bit TIFFs without tifffile's per-file machinery: reading the slices, writing the masks.

Why: tifffile parses every tag of a file into objects and checks many cases on each call; at
the demo size of inference (a forward pass of about 4 ms a slice) its 0.15-0.25 ms per file read
or written is a measurable share. The kaggle_3m files are the simplest kind of TIFF: one page,
uncompressed, 8 bits per sample, the pixels in one run of bytes. For exactly those this module
does the few steps by hand; anything else goes to tifffile, as before.

- :func:`read_plain_tiff`: the array and axes that tifffile's ``page.asarray()`` and
  ``page.axes`` give for a one-page, uncompressed, chunky, 8-bit unsigned TIFF with 1 (grey,
  "YX") or 3 (RGB, "YXS") samples whose strips are contiguous; ``None`` for any other file (a
  missing or damaged one included), so the caller reads it with tifffile and gets tifffile's
  error. A test compares both on the phantom's slices and masks and on files of other layouts.
- :func:`tiff_bytes`: the very bytes ``tifffile.imwrite`` writes for a 2-D uint8 array. The
  file tifffile writes for an uncompressed array is a header that depends only on the shape and
  dtype, then the pixels: the header is taken once per shape from tifffile itself (written for
  two different arrays, checked to differ only in the pixels), then reused. Any array this does
  not cover is written by tifffile into memory, so the bytes are tifffile's in every case.
"""

from __future__ import annotations

import io
import os
import struct
from os import PathLike

import numpy as np
import tifffile

__all__ = ["read_plain_tiff", "tiff_bytes", "write_bytes"]

_TYPES = {1: "B", 3: "H", 4: "I"}  # BYTE, SHORT, LONG: the only tag types read here
_IFD_END = 0  # no next page
# tags whose presence means another layout than the plain one (tiles, 3-D, predictor, extra samples)
_UNSUPPORTED = {317, 322, 323, 324, 325, 338, 32997}
_templates: dict[tuple[tuple[int, ...], str], tuple[bytes, bytes] | None] = {}


def _tags(data: bytes | bytearray) -> tuple[dict[int, tuple[int, ...]], int] | None:
    """The tags of the first page (code -> values) and the next page's offset, or None when the
    header is not a classic TIFF's or a tag is of a type not read here."""
    order = {b"II": "<", b"MM": ">"}.get(bytes(data[:2]))
    if order is None or struct.unpack(order + "H", data[2:4])[0] != 42:
        return None
    (offset,) = struct.unpack(order + "I", data[4:8])
    (count,) = struct.unpack(order + "H", data[offset : offset + 2])
    tags: dict[int, tuple[int, ...]] = {}
    for entry in range(offset + 2, offset + 2 + 12 * count, 12):
        code, kind, n = struct.unpack(order + "HHI", data[entry : entry + 8])
        fmt = _TYPES.get(kind)
        if fmt is None:
            if code in (256, 257, 258, 259, 262, 273, 277, 278, 279, 284, 339):
                return None  # a tag read below, of an unusual type
            tags[code] = ()
            continue
        size = struct.calcsize(fmt) * n
        where = entry + 8 if size <= 4 else struct.unpack(order + "I", data[entry + 8 : entry + 12])[0]
        tags[code] = struct.unpack(f"{order}{n}{fmt}", data[where : where + size])
    end = offset + 2 + 12 * count
    (following,) = struct.unpack(order + "I", data[end : end + 4])
    return tags, following


def read_plain_tiff(path: str | PathLike) -> tuple[np.ndarray, str] | None:
    """``(array, axes)`` as tifffile reads a plain 8-bit TIFF (see the module docstring), else None."""
    try:
        with open(path, "rb", buffering=0) as handle:
            data = bytearray(os.fstat(handle.fileno()).st_size)  # writable: the array is a view of it
            if handle.readinto(data) != len(data):
                return None
        parsed = _tags(data)
    except (OSError, struct.error, IndexError, ValueError):
        return None
    if parsed is None or parsed[1] != _IFD_END:
        return None
    tags, _ = parsed
    if _UNSUPPORTED & tags.keys():
        return None
    (samples,) = tags.get(277, (1,))
    photometric = {1: 1, 3: 2}.get(samples)
    try:
        (width,), (height,) = tags[256], tags[257]
        offsets, counts = tags[273], tags[279]
    except (KeyError, ValueError):
        return None
    plain = (
        tags.get(258, (8,) * samples) in ((8,) * samples, (8,))
        and tags.get(259, (1,)) == (1,)
        and tags.get(262) == (photometric,)
        and tags.get(284, (1,)) == (1,)
        and tags.get(266, (1,)) == (1,)
        and tags.get(339, (1,) * samples) in ((1,) * samples, (1,))
        and len(offsets) == len(counts) > 0
    )
    size = width * height * samples
    if not plain or sum(counts) != size or offsets[0] + size > len(data):
        return None
    if any(offsets[k] + counts[k] != offsets[k + 1] for k in range(len(offsets) - 1)):
        return None
    array = np.frombuffer(data, dtype=np.uint8, count=size, offset=offsets[0])
    if samples == 1:
        return array.reshape(height, width), "YX"
    return array.reshape(height, width, samples), "YXS"


def _written(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, array)
    return buffer.getvalue()


def _template(shape: tuple[int, ...]) -> tuple[bytes, bytes] | None:
    """tifffile's bytes before and after the pixels of a uint8 array of ``shape``, or None when
    its file for this shape is not header + pixels + trailer (then every file is tifffile's own)."""
    key = (shape, "|u1")
    if key not in _templates:
        count = int(np.prod(shape))
        pattern = (np.arange(count, dtype=np.int64) % 251 + 1).astype(np.uint8).reshape(shape)
        zeros, marked = _written(np.zeros(shape, np.uint8)), _written(pattern)
        start = marked.find(pattern.tobytes())
        end = start + count
        same = (
            start >= 0
            and len(zeros) == len(marked)
            and zeros[:start] == marked[:start]
            and zeros[end:] == marked[end:]
            and zeros[start:end] == bytes(count)
        )
        _templates[key] = (marked[:start], marked[end:]) if same else None
    return _templates[key]


def tiff_bytes(array: np.ndarray) -> bytes:
    """The bytes of ``tifffile.imwrite(file, array)`` (from a cached header for 2-D uint8 arrays)."""
    array = np.asarray(array)
    parts = _template(array.shape) if array.dtype == np.uint8 and array.ndim == 2 else None
    if parts is None:
        return _written(array)
    return b"".join((parts[0], np.ascontiguousarray(array).tobytes(), parts[1]))


def write_bytes(path: str | PathLike, data: bytes) -> None:
    """Write ``data`` to a new file at ``path`` (replacing one there)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)
