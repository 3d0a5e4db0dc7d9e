"""The package's architecture, checked by walking its imports with ``ast``.

Stages import one way: data <- training, evaluation <- inference <- export; tracking is used by
every stage and imports none of them; the shared helpers (``pipeline.atomic``, ``pipeline.errors``,
``pipeline.flags``) are imported by any stage and import none.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "pipeline"
STAGES = ("data", "training", "evaluation", "inference", "tracking", "export")
# the stages each stage may import (its own is always allowed)
ALLOWED = {
    "data": set(),
    "training": {"data", "tracking"},
    "evaluation": {"data", "tracking"},
    "inference": {"data", "training", "evaluation", "tracking"},
    "export": {"data", "training", "evaluation", "inference", "tracking"},
    "tracking": set(),
}
SHARED = ("atomic", "errors", "flags")  # helpers every stage may import; they import no stage
MAX_LINES = 300


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, module: str | None = None, top: str = "pipeline") -> set[str]:
    """Every ``pipeline...`` (or other ``top``) name that ``path`` imports, anywhere in it.

    ``module`` is the dotted name of the file (default: from its place under the repository).
    """
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: set[str] = set()
    module = module or module_name(path)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return {name for name in found if name == top or name.startswith(f"{top}.")}


def stage_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and (parts[1] in ALLOWED or parts[1] in SHARED) else None


def sources() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def import_graph() -> dict[str, set[str]]:
    known = {module_name(p) for p in sources()}
    graph = {}
    for path in sources():
        # `from pipeline.data import discovery` names a module; `from pipeline.data.discovery import X` a name
        graph[module_name(path)] = {m for m in imported_modules(path) if m in known} - {module_name(path)}
    return graph


def wrong_way(graph: dict[str, set[str]]) -> list[str]:
    problems = []
    for module, targets in graph.items():
        source = stage_of(module)
        if source is None:  # pipeline/__init__, __main__, cli: the top, may import anything
            continue
        for target in targets:
            stage = stage_of(target)
            allowed = set() if source in SHARED else {*ALLOWED[source], *SHARED}
            if stage is not None and stage != source and stage not in allowed:
                problems.append(f"{module} imports {target}: {source} may not import {stage}")
    return sorted(problems)


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    found, state = [], {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                found.append([*trail[trail.index(nxt) :], nxt] if nxt in trail else [node, nxt])
            elif nxt not in state:
                visit(nxt, [*trail, nxt])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    return found


def test_every_stage_is_a_package_with_a_docstring():
    for stage in STAGES:
        init = PACKAGE / stage / "__init__.py"
        assert init.is_file(), f"pipeline/{stage}/ is not a package"
        assert ast.get_docstring(ast.parse(init.read_text(encoding="utf-8"))), f"{init} has no docstring"


def test_imports_run_one_way():
    assert wrong_way(import_graph()) == []


def test_no_import_cycle():
    assert cycles(import_graph()) == []


def test_no_module_over_the_size_limit():
    long = [
        f"{p.relative_to(ROOT)}: {n}"
        for p in sources()
        if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES
    ]
    assert long == []


def test_the_checks_catch_a_wrong_import_and_a_cycle():
    graph = {
        "pipeline.tracking.compare": {"pipeline.export.build"},
        "pipeline.export.build": {"pipeline.export.verify"},
        "pipeline.export.verify": {"pipeline.export.build"},
        "pipeline.data.splits": {"pipeline.atomic"},
    }
    assert wrong_way(graph) == [
        "pipeline.tracking.compare imports pipeline.export.build: tracking may not import export"
    ]
    assert cycles(graph) == [["pipeline.export.build", "pipeline.export.verify", "pipeline.export.build"]]


@pytest.mark.parametrize(
    "source, expected",
    [
        ("from pipeline.evaluation import figures\n", {"pipeline.evaluation", "pipeline.evaluation.figures"}),
        ("def f():\n    import pipeline.export.layout\n", {"pipeline.export.layout"}),
        ("from .layout import sha256\n", {"pipeline.export.layout", "pipeline.export.layout.sha256"}),
    ],
)
def test_imports_are_found_anywhere_in_a_module(tmp_path, source, expected):
    path = tmp_path / "probe.py"
    path.write_text(source)
    assert imported_modules(path, "pipeline.export.probe") == expected


def test_test_modules_import_no_other_test_module():
    """Shared test code is in support modules and conftest fixtures, not in other test modules."""
    offenders = [
        f"{path.relative_to(ROOT)} imports {name}"
        for path in sorted((ROOT / "tests").rglob("*.py"))
        for name in imported_modules(path, top="tests")
        if any(part.startswith("test_") for part in name.split("."))
    ]
    assert offenders == []
