"""What a run records about itself besides metrics: git commit, flattened parameters, merged config."""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Mapping, Sequence
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


def bundle_arguments(argv: Sequence[str] | None = None) -> tuple[list[str], list[tuple[str, str]]]:
    """The ``--config_file`` files and the other ``--key value`` pairs (in order, values as typed)
    of a ``python -m monai.bundle run`` command line; words without ``--`` (``run training``) skip.

    Args:
        argv: the command line after the program name. Default None reads ``sys.argv[1:]``.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    files: list[str] = []
    pairs: list[tuple[str, str]] = []
    i = 0
    while i < len(args):
        if not args[i].startswith("--") or i + 1 == len(args):
            i += 1
            continue
        key, value = args[i][2:], args[i + 1]
        if key == "config_file":
            parsed = ast.literal_eval(value) if value.startswith("[") else value
            files = [parsed] if isinstance(parsed, str) else list(parsed)
        else:
            pairs.append((key, value))
        i += 2
    return files, pairs


def command_line_config(argv: Sequence[str] | None = None) -> dict | None:
    """The merged config (files, then overrides) of a ``python -m monai.bundle run`` command line.

    Rebuilt the way MONAI's ``run`` builds it: the ``--config_file`` files read in order, then
    every other ``--key value`` applied as an override, each value parsed by ``fire`` as the CLI
    parses it. MONAI gives a config component no handle on its parser, so the command line is
    the record of what was run.

    Args:
        argv: the command line after the program name. Default None reads ``sys.argv[1:]``.

    Returns:
        The raw (unresolved) merged config, or None when the command names no ``--config_file``
        (a workflow built in Python, e.g. ``ConfigWorkflow``: see :func:`record_workflow_config`).
    """
    from fire.parser import DefaultParseValue
    from monai.bundle import ConfigParser

    files, pairs = bundle_arguments(argv)
    if not files:
        return None
    parser = ConfigParser()
    parser.read_config(files)
    parser.update({key: DefaultParseValue(value) for key, value in pairs if key not in _RUN_ARGS})
    return parser.get()


def record_workflow_config(workflow: Any, handler: str = "mlflow_tracking") -> None:
    """Hand a workflow built in Python its merged config, for ``config.json`` and MLflow.

    A ``monai.bundle run`` command line is the record of what ran (:func:`command_line_config`);
    a ``ConfigWorkflow`` built in Python has none, and MONAI gives a config component no handle on
    its parser. Call this between ``workflow.initialize()`` and ``workflow.run()``.

    Args:
        workflow: an initialized ``monai.bundle.ConfigWorkflow``.
        handler: the config id of the MLflow tracking handler. Default "mlflow_tracking".
    """
    workflow.parser.get_parsed_content(handler).config = workflow.parser.get()


# ``monai.bundle run`` arguments that are not config overrides
_RUN_ARGS = frozenset({"meta_file", "logging_file", "init_id", "run_id", "final_id", "tracking", "args_file"})


def flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat
