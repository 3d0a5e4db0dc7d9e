"""Tracking URIs: where runs are logged unless the user says otherwise."""

from __future__ import annotations

import os
from pathlib import Path


def sqlite_uri(path: str | Path) -> str:
    """``sqlite:///`` URI of a database file (its folder is created)."""
    db = Path(path).expanduser().resolve()
    db.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{db}"


def default_tracking_uri(uri: str | None = None) -> str:
    """``uri``, else ``MLFLOW_TRACKING_URI``, else ``sqlite:///<cwd>/outputs/mlflow.db``."""
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path('outputs/mlflow.db').resolve()}"


def artifact_location(uri: str | None) -> str | None:
    """Artifacts of a SQLite store go to ``mlartifacts/`` beside the database file; None otherwise."""
    if not uri or not uri.startswith("sqlite:///"):
        return None
    db = Path(uri[len("sqlite:///") :].split("?")[0].removeprefix("file:"))
    return (db.parent / "mlartifacts").resolve().as_uri()
