"""Write output files atomically: a temporary file in the same folder, then a rename.

A reader (or a process killed mid-write) never sees half a file: it sees the old one or the new.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


def write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically (parent folders are created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", newline="") as handle:
            handle.write(text)
        os.chmod(tmp, 0o644)  # mkstemp files are private; outputs are ordinary files
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_json(path: str | Path, data: Any) -> Path:
    """Readable JSON (indent 2, sorted keys, trailing newline), written atomically."""
    return write_text(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
