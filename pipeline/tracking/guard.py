"""The MLflow plumbing of the training and evaluation runs: MLflow trouble never stops training.

- A locked SQLite database (another run writing) is retried with growing pauses, on top of
  MLflow's 20 s busy timeout. MLflow creates and migrates a new database file without a lock, so
  two runs starting on a fresh file would race: the client is built under a file lock.
- Other failures warn (the first one) and what they concern is counted as not logged.
- An unavailable store (connection refused or timed out, unknown host, read-only or unopenable
  database) trips a circuit breaker: MLflow is not contacted for ``unavailable_pause`` s (300)
  and what falls due meanwhile is counted as not logged. Decision: a dead server then costs one
  failed call (~2.5 s when refused, ~30 s when silent) per 5 minutes instead of one per logging
  call, at the price of losing up to 5 minutes of metrics after a short outage. The final run
  status is always tried once, so a run whose server came back is not left RUNNING.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from pipeline.errors import chain

logger = logging.getLogger(__name__)

# a remote server that does not answer should cost seconds, not MLflow's default minutes:
# a refused connection fails after ~2.5 s (2 retries, 0 + 2 s backoff, jitter), a silent one ~30 s
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")

# errors (anywhere in the exception chain) meaning the store is unavailable
_UNAVAILABLE = re.compile(
    "readonly database|read-only|unable to open database|max retries exceeded|connection refused|"
    "failed to establish a new connection|timed out|name or service not known|name resolution",
    re.IGNORECASE,
)


def _is_locked(error: Exception) -> bool:
    return any("database is locked" in str(e).lower() for e in chain(error))


def _is_unavailable(error: Exception) -> bool:
    return any(
        isinstance(e, (ConnectionError, TimeoutError)) or _UNAVAILABLE.search(str(e)) for e in chain(error)
    )


def _describe(error: Exception) -> str:
    """``Type: first line`` of the innermost cause (MLflow's own message is often a wrapper)."""
    root = chain(error)[-1]
    lines = [line for line in str(root).splitlines() if line.strip()]
    return f"{type(root).__name__}: {lines[0][:300] if lines else ''}"


@contextlib.contextmanager
def creation_lock(uri: str | None) -> Iterator[None]:
    """Hold a file lock while an MlflowClient is built on a SQLite ``uri`` (a no-op otherwise).

    MLflow creates and migrates a new SQLite database file, when the client is built, without any
    lock, so two runs starting together on one file race; here one builds it at a time.
    """
    if not (uri or "").startswith("sqlite:") or os.name == "nt":
        yield
        return
    import fcntl

    digest = hashlib.md5(uri.encode(), usedforsecurity=False).hexdigest()
    with open(Path(tempfile.gettempdir()) / f"lgg-mlflow-init-{digest}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # released on close, also when this process dies
        yield


class MLflowGuard:
    """Guarded MLflow calls, the base of :class:`pipeline.tracking.training_run.MLflowTracking`.

    The subclass sets the state used here: ``enabled``, ``tracking_uri``, ``retries``,
    ``unavailable_pause``, ``failures``, ``first_error``, ``_paused_until``, ``_started``,
    ``_ok``, ``client`` and ``run_id`` (see its constructor).
    """

    def _log(self, what: str, metrics: list[Any] = (), params: list[Any] = (), tags: list[Any] = ()) -> None:
        """``client.log_batch`` to ``run_id``, guarded, in chunks of MLflow's limit of 1000 metrics."""
        if not self.enabled or not (metrics or params or tags):
            return
        if self.run_id is None:  # no run (MLflow failed at start): count what it would have held
            self._not_logged(what, len(metrics) + len(params) + len(tags))
            return
        for start in range(0, max(len(metrics), 1), 1000):  # MLflow's batch limit is 1000 metrics
            chunk = list(metrics[start : start + 1000])
            first = start == 0
            self._call(
                what,
                self.client.log_batch,
                self.run_id,
                metrics=chunk,
                params=list(params) if first else [],
                tags=list(tags) if first else [],
                count=len(chunk) + (len(params) + len(tags) if first else 0),
            )

    def _report_not_logged(self, where_results_are: str) -> None:
        """Warn once with what was not logged (``1 run, 30 params and tags, ...``), if anything."""
        if self.failures:
            logger.warning(
                "MLflow: not logged to %s (%s): %s. %s",
                self.tracking_uri,
                self.first_error,
                ", ".join(f"{v} {k}" for k, v in self.failures.items()),
                where_results_are,
            )

    def _not_logged(self, what: str, count: int) -> None:
        if count > 0 and self._started:
            self.failures[what] = self.failures.get(what, 0) + count

    def _call(
        self,
        what: str,
        fn: Callable,
        *args: Any,
        count: int = 1,
        reraise: tuple[type[Exception], ...] = (),
        **kwargs: Any,
    ) -> Any:
        """Call the MLflow client; retry a locked database, otherwise warn and carry on.

        On failure (``self._ok`` False) ``count`` values of ``what`` are counted as not logged and
        None is returned; errors of a ``reraise`` type propagate. While paused only the "final run
        status" is attempted.
        """
        self._ok = False
        if not self.enabled:
            return None
        if time.monotonic() < self._paused_until and what != "final run status":
            self._not_logged(what, count)
            return None
        delay = 0.5
        for attempt in range(1, self.retries + 1):
            try:
                result = fn(*args, **kwargs)
                self._ok = True
                return result
            except reraise:
                raise
            except Exception as error:  # MLflow raises many types; none may stop training
                if _is_locked(error) and attempt < self.retries:
                    time.sleep(delay)
                    delay = min(2 * delay, 20.0)
                    continue
                self._not_logged(what, count)
                pause = _is_unavailable(error)
                if pause:
                    self._paused_until = time.monotonic() + self.unavailable_pause
                if self.first_error is None or pause:
                    note = (
                        f" MLflow is not contacted again for {self.unavailable_pause:.0f} s." if pause else ""
                    )
                    logger.warning(
                        "MLflow logging failed at %s (%s); training goes on and checkpoints are still "
                        "written. Not logged: %s.%s",
                        self.tracking_uri,
                        _describe(error),
                        what,
                        note,
                    )
                self.first_error = self.first_error or _describe(error)
                return None
        return None
