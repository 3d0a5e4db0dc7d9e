"""What a run records about itself besides metrics: git commit, flattened parameters, merged config."""

from __future__ import annotations

import inspect
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any


def git_commit(path: str | Path = ".") -> str | None:
    """The git commit of ``path`` (with ``-dirty`` when it has uncommitted changes), or None."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=path, capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=path,
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{commit}-dirty" if dirty else commit


def active_bundle_config() -> dict | None:
    """The merged config (all files and overrides) of the MONAI ConfigParser building this object.

    MONAI gives a config component no handle on its parser; the parser that instantiates us is on
    the call stack, so we read its raw (unresolved) config there.
    """
    from monai.bundle import ConfigParser

    for frame_info in inspect.stack(context=0):
        candidate = frame_info.frame.f_locals.get("self")
        if isinstance(candidate, ConfigParser):
            return candidate.get()
    return None


def flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat
