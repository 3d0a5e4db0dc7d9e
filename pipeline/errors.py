"""What a person sees when a bundle command stops: our message on the last line, Ctrl-C in one line.

MONAI wraps an error raised while it evaluates a config expression or builds a component
(``RuntimeError: Failed to evaluate ConfigExpression ...``, ``Failed to instantiate component
...``), so the message of ours that says what was wrong and how to fix it ends up a dozen lines
above the last one. :func:`install` (the first step of every config's ``initialize``) replaces
``sys.excepthook``: the traceback is printed as usual, then the innermost error raised by this
project's code is printed again as the last line. A ``KeyboardInterrupt`` prints only the notice
a handler registered with :func:`set_interrupt_notice` (training: the epoch reached and the
command that resumes), or "Interrupted.", instead of the traceback.
"""

from __future__ import annotations

import sys
import traceback
from pathlib import Path
from types import TracebackType

ROOT = Path(__file__).resolve().parents[1]
OUR_PACKAGES = tuple(str(ROOT / name) + "/" for name in ("pipeline", "transforms", "networks"))

_notice: str | None = None
_previous_hook = sys.excepthook


def chain(error: BaseException) -> list[BaseException]:
    """``error`` and its causes (``__cause__``, else ``__context__``), outermost first."""
    found: list[BaseException] = []
    while error is not None and error not in found:
        found.append(error)
        error = error.__cause__ or error.__context__
    return found


def raised_by_us(error: BaseException) -> bool:
    """The innermost frame of ``error``'s traceback is in pipeline/, transforms/ or networks/."""
    frames = traceback.extract_tb(error.__traceback__)
    return bool(frames) and frames[-1].filename.startswith(OUR_PACKAGES)


def our_error(error: BaseException) -> BaseException | None:
    """The innermost exception of the chain that this project's code raised, if any."""
    ours = [e for e in chain(error) if raised_by_us(e)]
    return ours[-1] if ours else None


def set_interrupt_notice(message: str | None) -> None:
    """The line printed, instead of a traceback, when the process ends on a KeyboardInterrupt."""
    global _notice
    _notice = message


def excepthook(kind: type[BaseException], error: BaseException, tb: TracebackType | None) -> None:
    """``sys.excepthook``: see the module docstring."""
    if any(isinstance(e, KeyboardInterrupt) for e in chain(error)):
        print(_notice or "Interrupted.", file=sys.stderr)
        return
    _previous_hook(kind, error, tb)
    ours = our_error(error)
    if ours is not None and ours is not error:
        print(f"{type(ours).__name__}: {ours}", file=sys.stderr)


def install() -> None:
    """Make :func:`excepthook` the process's exception hook (once; idempotent)."""
    sys.excepthook = excepthook
