"""Write outputs atomically: a reader, or a process killed mid-write, sees the old or the new, never half.

Files: :func:`write_atomically` hands a writer a temporary path beside the target (the same
folder, so the rename is atomic), then renames it over the target. JSON, CSV and text (:func:`write_text`,
:func:`write_json`), PNG figures, TIFF and NIfTI masks and checkpoints all go through it.

Folders (the phantom dataset): :func:`staged` fills a staging folder beside the target and
renames it into place:

- The files go to ``.<name>.partial-<pid>-<random>`` beside the target (same filesystem). The
  last file written there is the marker :data:`COMPLETE` (written to a temporary name, renamed).
- Publishing renames the staging folder to the target, one atomic step when the target is
  missing or an empty folder. A target holding other files (a README, say) gets the staging
  entries moved in one by one, the marker last.
- The next build of the same target (:func:`recover`) removes staging folders without the marker
  (an interrupted fill) and finishes publishing those with it (an interrupted move).
- Builds are serialised by an exclusive ``flock`` on the target's parent folder (re-entrant
  within a process; released by the kernel when a process dies), so a build never removes the
  staging folder of a build still running. Without ``fcntl`` (Windows) there is no lock.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import json
import logging
import os
import secrets
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

logger = logging.getLogger(__name__)

COMPLETE = ".complete"
_held: dict[str, int] = {}


def write_atomically(
    path: str | Path, write: Callable[[Path], Any], durable: bool = False, keep_suffix: bool = False
) -> Path:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then rename it to ``path``.

    Args:
        path: the file to (re)place; its folder is created.
        write: writes the whole file at the path it is given (``lambda tmp: torch.save(obj, tmp)``).
        durable: fsync the file before the rename, so a power cut cannot leave an empty file
            under the final name (checkpoints). Default False.
        keep_suffix: name the temporary file ``.tmp-<pid>-<random>-<name>``, ending like the target,
            for writers that choose the format from the name (nibabel, ITK). Default False:
            ``.<name>.<pid>-<random>.tmp``, which no ``*.pt`` or ``*.nii.gz`` pattern matches.

    Returns:
        ``path`` as a Path. On any exception the temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # an ordinary file (not mkstemp's private 0600)
    tag = f"{os.getpid()}-{secrets.token_hex(4)}"
    tmp = path.with_name(f".tmp-{tag}-{path.name}" if keep_suffix else f".{path.name}.{tag}.tmp")
    try:
        write(tmp)
        if durable:
            with open(tmp, "rb+") as handle:
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically (parent folders are created)."""

    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="") as handle:
            handle.write(text)

    return write_atomically(path, write)


def write_json(path: str | Path, data: Any) -> Path:
    """Readable JSON (indent 2, sorted keys, trailing newline), written atomically."""
    return write_text(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


COMPLETE = ".complete"
_held: dict[str, int] = {}


@contextlib.contextmanager
def locked(target: Path) -> Iterator[None]:
    """Hold the build lock of ``target`` (an flock on its parent folder, created if missing)."""
    parent = Path(target).parent
    parent.mkdir(parents=True, exist_ok=True)
    key = str(parent.resolve())
    if fcntl is None or _held.get(key):
        _held[key] = _held.get(key, 0) + 1
        try:
            yield
        finally:
            _held[key] -= 1
        return
    fd = os.open(parent, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as error:  # a filesystem without flock: build unlocked
            logger.debug("No lock on %s: %s", parent, error)
        _held[key] = 1
        yield
    finally:
        _held.pop(key, None)
        os.close(fd)


def leftovers(target: Path) -> list[Path]:
    """Staging folders of ``target`` left by builds that did not finish (or are running)."""
    target = Path(target)
    return sorted(target.parent.glob(f".{glob.escape(target.name)}.partial-*"))


def _publish(staging: Path, target: Path) -> None:
    try:
        os.rename(staging, target)  # target missing or an empty folder: atomic
        return
    except OSError as error:
        if error.errno not in (errno.ENOTEMPTY, errno.EEXIST):
            raise
    for entry in sorted(staging.iterdir()):
        if entry.name != COMPLETE:
            os.replace(entry, target / entry.name)
    os.replace(staging / COMPLETE, target / COMPLETE)
    staging.rmdir()


def recover(target: Path) -> None:
    """Clean up after interrupted builds of ``target``; call it holding :func:`locked`."""
    for staging in leftovers(target):
        if (staging / COMPLETE).is_file():
            logger.warning("Finishing the interrupted move of %s into %s", staging, target)
            _publish(staging, Path(target))
        else:
            logger.warning("Removing %s, left by an interrupted build of %s", staging, target)
            shutil.rmtree(staging, ignore_errors=True)


@contextlib.contextmanager
def staged(target: Path, marker: str) -> Iterator[Path]:
    """Yield a new staging folder to fill; then write ``marker`` into :data:`COMPLETE` and publish.

    Call it holding :func:`locked`, after :func:`recover`. An exception in the block removes the
    staging folder and leaves the target untouched.
    """
    target = Path(target)
    staging = target.parent / f".{target.name}.partial-{os.getpid()}-{secrets.token_hex(4)}"
    staging.mkdir()
    try:
        yield staging
        (staging / f"{COMPLETE}.tmp").write_text(marker)
        os.replace(staging / f"{COMPLETE}.tmp", staging / COMPLETE)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    _publish(staging, target)
