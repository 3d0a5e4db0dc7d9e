"""``ComposeWithoutMeta``: MONAI's Compose with metadata tracking switched off while it runs.

MONAI's spatial transforms wrap every output in a MetaTensor and record each applied operation
(for inversion). The training augmentations are never inverted and their input and output are
plain tensors (``EnsureTyped(track_meta=False)`` ends the cached chain),
so that bookkeeping is pure cost: measured on this project's 2-core CPU at the demo size
(3x128x128 image and mask, RandZoomd + RandRotated + RandFlipd, one thread), 9.4-9.8 ms per
sample with tracking and 2.6-3.3 ms without. On a CPU the DataLoader workers share the cores
with the training step, so that saving goes straight into the step rate.

The random draws and the arithmetic are MONAI's own: the outputs equal those of a plain Compose
with the same random state (tests/transforms/test_compose.py checks it).

Metadata tracking is a process-wide MONAI setting; it is switched off for the duration of the
call and restored afterwards. That is safe in DataLoader worker processes and in a single-threaded
main process (``num_workers=0``); do not call one instance from several threads at once.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from monai.data import get_track_meta, set_track_meta
from monai.transforms import Compose


@contextmanager
def metadata_off() -> Iterator[None]:
    """MONAI's metadata tracking switched off inside the block, restored after it."""
    previous = get_track_meta()
    set_track_meta(False)
    try:
        yield
    finally:
        set_track_meta(previous)


class ComposeWithoutMeta(Compose):
    """Compose whose transforms run with ``monai.data.set_track_meta(False)``.

    Takes Compose's arguments. Being a Compose (hence Randomizable), it marks where a
    CacheDataset stops caching when it holds random transforms, and ``set_random_state``
    reaches the transforms inside it.
    """

    def __call__(self, input_: Any, *args: Any, **kwargs: Any) -> Any:
        with metadata_off():
            return super().__call__(input_, *args, **kwargs)
