"""The end of an inference run: ``failures.csv``, the summary logged, and the error that fails it.

Decisions:

- A bad input never stops the run (:mod:`pipeline.inference.writers`): an input found unusable
  (:attr:`InferenceInput.error`), a volume that fails to read while the run goes on, or an input
  whose outputs fail to write is recorded with its error, and the others are segmented.
- At the end, after every other output (masks, ``lesion_volumes.csv``, ``report.html``) is
  written, ``failures.csv`` (columns ``input``, ``error``; sorted by input) lists them, the
  summary is logged, and :class:`InferenceFailed` is raised naming them and the file, so
  ``python -m monai.bundle run`` exits non-zero and a script notices.
- A run without failures removes a ``failures.csv`` left in ``output_dir`` by an earlier run
  (resumed with ``skip_existing``), so the folder never lists failures that were since fixed.
"""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Mapping
from pathlib import Path

from pipeline.atomic import write_text

logger = logging.getLogger(__name__)

FAILURES_NAME = "failures.csv"
SHOWN = 5  # failed inputs named in the error message


class InferenceFailed(RuntimeError):
    """Some inputs could not be segmented; the others' outputs are written.

    Attributes:
        failures: input name -> error.
        path: ``failures.csv``.
    """

    def __init__(self, failures: Mapping[str, str], path: Path) -> None:
        self.failures = dict(failures)
        self.path = Path(path)
        names = sorted(self.failures)
        more = f" and {len(names) - SHOWN} more" if len(names) > SHOWN else ""
        super().__init__(
            f"{len(names)} input(s) could not be segmented: {', '.join(names[:SHOWN])}{more}; "
            f"the errors, one per input, are in {self.path}. The other inputs' masks, lesion_volumes.csv "
            "and report.html are written: fix the inputs named there and run again with "
            "--skip_existing true to segment only what is missing"
        )


def write_failures(output_dir: Path, failures: Mapping[str, str]) -> Path | None:
    """Write ``failures.csv`` when there are failures (else remove a stale one); its path or None."""
    path = Path(output_dir) / FAILURES_NAME
    if not failures:
        path.unlink(missing_ok=True)
        return None
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["input", "error"])
    writer.writerows([name, failures[name]] for name in sorted(failures))
    return write_text(path, buffer.getvalue())


def log_summary(
    segmented: int, kept: int, failures: Mapping[str, str], slices: int, seconds: float, csv_path: Path
) -> None:
    """One line on what the run did, then one warning line per failed input."""
    logger.info(
        "Segmented %d slices of %d inputs in %.1f s (%.2f slices/s); %d kept from an earlier run, "
        "%d failed; lesion volumes in %s",
        slices,
        segmented,
        seconds,
        slices / max(seconds, 1e-9),
        kept,
        len(failures),
        csv_path,
    )
    for name in sorted(failures):
        logger.warning("Not segmented: %s: %s", name, failures[name])
