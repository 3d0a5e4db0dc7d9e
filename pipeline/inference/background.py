"""One background thread that writes each finished input's outputs while the network goes on.

Why: at the demo size a patient's outputs (its TIFF slice masks, the NIfTI volume, the DICOM
Segmentation, its connected components for the CSV, the overlay PNG) cost about as much as
predicting its slices. Written on the evaluator's thread they stall the forward passes; written
here they overlap with the next patient's. MONAI's writers (SaveImaged) write on the calling
thread, and ignite has no asynchronous handler, hence this small class.

Decisions:

- One thread, and at most one input waiting behind the one being written: :meth:`submit` blocks
  until the previous job started. So a run holds at most three patients' masks (one being
  predicted, one queued, one being written), however many patients it has.
- A job's exception is the job's own business (the writer catches and records it); an exception
  that escapes a job is kept and raised again by :meth:`drain`, so nothing fails silently.
- :meth:`drain` waits for every job; the writer calls it before the CSV, report and failures are
  written, so those always see every input.
- ``background=False`` runs each job at once on the calling thread (the same order, the same
  results): for debugging, and for callers that want no thread at all.
- Whether the writer uses the thread (:func:`background_pays`): yes when the network runs on a
  GPU, or when the CPU has a core beyond torch's intra-op threads; no on a CPU whose cores the
  forward pass already uses (2 cores, 2 threads). Measured there: a writer beside the bare
  forward pass slowed it 3x as a thread and by 16% as a separate process at nice 19 (OpenMP's
  threads wait for each other at every operation, so one of them losing its core stalls both),
  while the writing itself costs about 0.6 ms a slice at the demo size.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

import torch

__all__ = ["BackgroundJobs", "background_pays"]


def background_pays(device: torch.device | str | None = None) -> bool:
    """Whether writing on a background thread saves time: the network runs on a GPU (``device``
    not a CPU), or the CPU has more cores than torch's intra-op threads (see the module docstring)."""
    if device is not None and torch.device(device).type != "cpu":
        return True
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return cores > torch.get_num_threads()


class BackgroundJobs:
    """Run jobs one at a time, in submission order, on one background thread.

    Args:
        background: run jobs on a background thread. Default True; False runs them at once.
        name: the thread's name (in stack dumps and profilers). Default "inference-writer".
    """

    def __init__(self, background: bool = True, name: str = "inference-writer") -> None:
        self.background = bool(background)
        self.name = name
        self._executor: ThreadPoolExecutor | None = None
        self._futures: list[Future] = []
        self._slot = threading.Semaphore(2)  # the job being written and one waiting

    def submit(self, job: Callable[[], None]) -> None:
        """Run ``job()`` after the jobs submitted before it; blocks while two are pending."""
        if not self.background:
            job()
            return
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=self.name)
        self._slot.acquire()

        def run() -> None:
            try:
                job()
            finally:
                self._slot.release()

        self._futures = [f for f in self._futures if not f.done() or f.exception() is not None]
        self._futures.append(self._executor.submit(run))

    def drain(self) -> None:
        """Wait for every job submitted; raise the first exception that escaped one."""
        futures, self._futures = self._futures, []
        error: BaseException | None = None
        for future in futures:
            failure = future.exception()
            if failure is not None and error is None:
                error = failure
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
        if error is not None:
            raise error
