"""Build a folder all at once: fill a staging folder beside it, then rename it into place.

Used by the phantom generator (:func:`pipeline.data.phantom.generate_dataset`), so that a run killed
mid-way never leaves a partly filled dataset folder that the next run takes for data:

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
import logging
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

__all__ = ["COMPLETE", "leftovers", "locked", "recover", "staged"]

logger = logging.getLogger(__name__)

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
