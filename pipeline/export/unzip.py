"""Unpack an untrusted bundle .zip safely: nothing lands outside the target, nothing half-written.

A bundle .zip comes from another team or machine, so it is untrusted input. Before anything is
written, every entry of the central directory is checked; a zip is refused (naming the entry) for:

- an absolute name (``/x``, ``\\x``, ``C:x``), a backslash, a ``..``/``.``/empty component, a
  control character, or a name that would land outside ``DIR`` once joined;
- a symbolic link or any other entry that is neither a regular file nor a folder (the file type
  in the upper bits of ``external_attr``), an encrypted entry, a compression other than
  stored/deflate;
- the same name twice (compared case-insensitively, as on Windows and macOS), or a name that is
  both a file and a folder;
- more than ``MAX_MEMBERS`` entries, more than ``MAX_TOTAL_BYTES`` declared in all, or a declared
  size over ``MAX_RATIO`` times the compressed size (a zip bomb), for entries over ``RATIO_FLOOR``.

The files are then decompressed by this module from the raw compressed bytes, not by
:mod:`zipfile`, which trusts the header's sizes: a file that inflates to more than its declared
size is refused as soon as it passes it (so the limits above hold for the actual bytes), and one
that inflates to less, or whose CRC-32 differs, is refused as corrupt.

Everything goes to a temporary folder beside ``DIR``, which is checked by the caller's ``check``
(the bundle verification of :mod:`pipeline.export.verify`: sha256 of the model files first, then
their pickles, then the network and ONNX parity) and renamed to ``DIR`` only when all of it
passed; on any refusal the temporary folder is removed, so nothing is left half-written.
``DIR`` must not exist or be an empty folder. A zip holding a single top folder (what
``python -m pipeline export`` writes) has that folder's content placed in ``DIR``.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import stat
import struct
import tempfile
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path

logger = logging.getLogger(__name__)

MAX_MEMBERS = 256  # an exported bundle has about 20 entries
MAX_TOTAL_BYTES = 4 << 30  # 4 GiB decompressed in all; a full-size U-Net bundle is well under 100 MB
MAX_RATIO = 100  # declared size / compressed size; weights barely compress, JSON about 10x
RATIO_FLOOR = 1 << 20  # entries under 1 MiB may compress any amount (small JSON, LICENSE)
CHUNK = 1 << 20
ADVICE = (
    "Nothing was extracted. Ask the sender to re-export the model with `python -m pipeline export` "
    "and send the new .zip unchanged (zips repacked or edited by hand are refused)."
)
_BAD_NAME = re.compile(r"[\x00-\x1f\\:]")  # control characters, backslashes, drive letters / streams
_LOCAL_HEADER = struct.Struct(zipfile.structFileHeader)  # name and extra lengths are fields 10, 11


class BundleImportError(ValueError):
    """The zip was refused; the message names the zip, the entry and what to do."""


def _refuse(zip_path: Path, entry: str, reason: str) -> BundleImportError:
    return BundleImportError(f"{zip_path}: entry {entry!r} {reason}. {ADVICE}")


def _parts(zip_path: Path, info: zipfile.ZipInfo) -> tuple[str, ...]:
    """The checked path components of an entry (a folder entry ends with "/")."""
    name = info.filename
    if name.startswith("/") or name.startswith("\\") or re.match(r"^[A-Za-z]:", name):
        raise _refuse(zip_path, name, "is an absolute path")
    parts = tuple(name[:-1].split("/") if name.endswith("/") else name.split("/"))
    if ".." in parts:
        raise _refuse(zip_path, name, "has a '..' component (path traversal)")
    if any(p in ("", ".") for p in parts) or _BAD_NAME.search(name):
        raise _refuse(
            zip_path,
            name,
            "is not a plain relative path (empty or '.' part, backslash, ':' or control character)",
        )
    return parts


def _check_kind(zip_path: Path, info: zipfile.ZipInfo) -> None:
    mode = info.external_attr >> 16
    kind = stat.S_IFMT(mode)
    if stat.S_ISLNK(mode):
        raise _refuse(zip_path, info.filename, "is a symbolic link")
    if kind and kind not in (stat.S_IFREG, stat.S_IFDIR):
        raise _refuse(zip_path, info.filename, f"is not a regular file or folder (file type {oct(kind)})")
    if stat.S_ISDIR(mode) != info.is_dir() and kind:
        raise _refuse(zip_path, info.filename, "is a folder whose name does not end with '/', or the reverse")
    if info.is_dir() and info.file_size:
        raise _refuse(zip_path, info.filename, "is a folder with content")
    if info.flag_bits & 0x1:
        raise _refuse(zip_path, info.filename, "is encrypted")
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        raise _refuse(
            zip_path, info.filename, f"uses compression method {info.compress_type} (only stored/deflate)"
        )


def check_entries(zip_path: Path, infos: list[zipfile.ZipInfo]) -> dict[str, tuple[str, ...]]:
    """Entry name -> path components, after every check that needs no decompression.

    Raises:
        BundleImportError: the first refused entry, named.
    """
    if len(infos) > MAX_MEMBERS:
        raise BundleImportError(
            f"{zip_path}: {len(infos)} entries, over the limit of {MAX_MEMBERS}. {ADVICE}"
        )
    parts, seen, total = {}, {}, 0
    for info in infos:
        parts[info.filename] = path = _parts(zip_path, info)
        _check_kind(zip_path, info)
        key = "/".join(path).casefold()
        if key in seen and not (info.is_dir() and seen[key].is_dir()):
            raise _refuse(zip_path, info.filename, f"appears twice (also as {seen[key].filename!r})")
        seen[key] = info
        total += info.file_size
        if total > MAX_TOTAL_BYTES:
            raise _refuse(zip_path, info.filename, f"takes the declared total over {MAX_TOTAL_BYTES} bytes")
        if info.file_size > RATIO_FLOOR and info.file_size > MAX_RATIO * max(info.compress_size, 1):
            raise _refuse(
                zip_path,
                info.filename,
                f"declares {info.file_size} bytes from {info.compress_size} compressed, "
                f"a ratio over {MAX_RATIO} (zip bomb)",
            )
    files = {"/".join(p).casefold() for n, p in parts.items() if not n.endswith("/")}
    for name, path in parts.items():
        for i in range(1, len(path)):
            if "/".join(path[:i]).casefold() in files:
                raise _refuse(zip_path, name, f"lies inside {'/'.join(path[:i])!r}, which is a file")
    return parts


def _inflate(handle, info: zipfile.ZipInfo, zip_path: Path):
    """The decompressed bytes of an entry, in pieces of at most CHUNK, from its raw data."""
    handle.seek(info.header_offset)
    header = handle.read(_LOCAL_HEADER.size)
    if len(header) != _LOCAL_HEADER.size or header[:4] != zipfile.stringFileHeader:
        raise _refuse(zip_path, info.filename, "has no valid local header")
    fields = _LOCAL_HEADER.unpack(header)
    local_name = handle.read(fields[10])
    if local_name.decode("utf-8" if fields[3] & 0x800 else "cp437", "replace") != info.orig_filename:
        raise _refuse(zip_path, info.filename, f"has another name in its local header ({local_name!r})")
    handle.seek(fields[11], os.SEEK_CUR)
    inflater = zlib.decompressobj(-15) if info.compress_type == zipfile.ZIP_DEFLATED else None
    left = info.compress_size
    while left:
        raw = handle.read(min(CHUNK, left))
        if not raw:
            raise _refuse(zip_path, info.filename, "is truncated (the zip ends inside it)")
        left -= len(raw)
        while raw and inflater is not None and not inflater.eof:
            yield inflater.decompress(raw, CHUNK)
            raw = inflater.unconsumed_tail
        if inflater is None:
            yield raw
    if inflater is not None:
        if not inflater.eof:
            raise _refuse(zip_path, info.filename, "is truncated (its deflate stream does not end)")
        yield inflater.flush()


def _extract(zip_path: Path, archive: zipfile.ZipFile, parts: dict, root: Path, strip: int) -> None:
    with open(zip_path, "rb") as handle:
        for info in archive.infolist():
            path = parts[info.filename][strip:]
            target = root.joinpath(*path) if path else root
            if not target.resolve().is_relative_to(root):
                raise _refuse(zip_path, info.filename, f"resolves outside {root.name}")
            if info.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            size, crc = 0, 0
            with open(target, "xb") as out:
                for piece in _inflate(handle, info, zip_path):
                    size += len(piece)
                    if size > info.file_size:
                        raise _refuse(
                            zip_path,
                            info.filename,
                            f"decompresses to more than its declared {info.file_size} bytes "
                            "(the header lies about its size)",
                        )
                    crc = zlib.crc32(piece, crc)
                    out.write(piece)
            if size != info.file_size or crc != info.CRC:
                raise _refuse(zip_path, info.filename, "is corrupt (size or CRC-32 differs from its header)")


def extract(zip_path: str | Path, dest_dir: str | Path, check: Callable[[Path], list[str]]) -> Path:
    """Unpack ``zip_path`` into ``dest_dir`` after checking its entries (see the module docstring).

    Args:
        zip_path: the received .zip.
        dest_dir: the folder to create; it must not exist or be empty.
        check: called on the unpacked temporary folder; the problems it returns (each naming its
            file) refuse the zip. ``dest_dir`` is created only when it returns none.

    Returns:
        ``dest_dir``, holding configs/, models/, docs/ and LICENSE.

    Raises:
        FileNotFoundError: the zip does not exist.
        FileExistsError: ``dest_dir`` exists and is not an empty folder.
        BundleImportError: the zip was refused; nothing was written.
    """
    zip_path = Path(zip_path).resolve()
    dest = Path(dest_dir).resolve()
    if not zip_path.is_file():
        raise FileNotFoundError(f"{zip_path} does not exist; pass the bundle .zip you received")
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise FileExistsError(f"{dest} exists and is not empty; choose a new --to folder")
    try:
        archive = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError) as error:
        raise BundleImportError(f"{zip_path}: not a readable zip ({error}). {ADVICE}") from error
    with archive:
        parts = check_entries(zip_path, archive.infolist())
        tops = {p[0] for p in parts.values()}
        single = len(tops) == 1 and all(len(p) > 1 or n.endswith("/") for n, p in parts.items())
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".importing", dir=dest.parent)).resolve()
        try:
            _extract(zip_path, archive, parts, tmp, strip=1 if single else 0)
            problems = check(tmp)
            if problems:
                prefix = f"{zip_path}:{next(iter(tops))}/" if single else f"{zip_path}:"
                listed = "\n".join(f"  {p.replace(f'{tmp}/', prefix)}" for p in problems)
                raise BundleImportError(f"{zip_path}: the bundle does not verify:\n{listed}\n{ADVICE}")
            if dest.exists():
                dest.rmdir()  # empty, checked above
            os.replace(tmp, dest)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return dest
