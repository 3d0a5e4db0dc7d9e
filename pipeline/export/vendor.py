"""The bundle's own code: this repository's modules that inference imports, vendored under ``scripts/``.

MONAI model-zoo bundles keep their Python code in a ``scripts/`` package beside ``configs/``. The
exported bundle does the same with the modules its inference.json names (``pipeline.*``,
``transforms``, ``networks``) and everything they import from this repository, found by walking
their imports with :mod:`ast` (imports inside functions included, as tests/test_architecture.py
does), so that a module added to inference is vendored without a list to keep up to date.

Why ``scripts.pipeline...`` and not ``pipeline`` on ``sys.path``: a Python that has this repository
installed (an editable install is importable even under ``python -I``), or has imported
``pipeline`` already, would run that copy instead of the bundle's. So every absolute import of
``pipeline``, ``transforms`` or ``networks`` in a vendored file is rewritten to the ``scripts.``
package (:func:`rewrite_source`; the statement keeps its line, so tracebacks keep line numbers)
and the result is checked with :mod:`ast` (:func:`check_vendored`): no import of the
repository's names is left, and every ``scripts.`` import names a vendored module.

How ``scripts`` is found: ``scripts/loader.py`` (:mod:`pipeline.export.bundle_loader`) imports
the package from its own folder; see there for why not ``sys.path``.
"""

from __future__ import annotations

import ast
import importlib.metadata
import io
import sys
import tokenize
from collections.abc import Iterable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TOPS = ("pipeline", "transforms", "networks")  # this repository's top-level packages
PACKAGE = "scripts"
LOADER = Path(__file__).with_name("bundle_loader.py")
SEPARATE_VERSIONS = {"torch": "pytorch_version", "monai": "monai_version", "numpy": "numpy_version"}


def module_file(name: str, root: Path = ROOT) -> Path | None:
    """The file of the repository module ``name`` (a package's ``__init__.py``), or None."""
    path = root.joinpath(*name.split("."))
    if (path / "__init__.py").is_file():
        return path / "__init__.py"
    return path.with_suffix(".py") if path.with_suffix(".py").is_file() else None


def _absolute(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    parts = module.split(".") if is_package else module.split(".")[:-1]
    anchor = parts[: len(parts) - node.level + 1]
    return ".".join([*anchor, node.module] if node.module else anchor)


def imported_names(source: str, module: str, is_package: bool = False) -> set[str]:
    """Every dotted name ``source`` imports (``from a import b`` gives ``a`` and ``a.b``), anywhere."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(node, module, is_package)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def closure(roots: Iterable[str], root: Path = ROOT) -> dict[str, Path]:
    """Module name -> file of ``roots``, their packages and every repository module they import."""
    seen: dict[str, Path] = {}
    todo = list(roots)
    while todo:
        name = todo.pop()
        path = module_file(name, root)
        if path is None or name in seen:
            continue
        seen[name] = path
        parts = name.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]
        names = imported_names(path.read_text(encoding="utf-8"), name, path.name == "__init__.py")
        todo += [n for n in names if n.split(".")[0] in TOPS]
    return dict(sorted(seen.items()))


def _top_level_names(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Import | ast.ImportFrom):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(n.id for target in targets for n in ast.walk(target) if isinstance(n, ast.Name))
    return names


def longest_module(dotted: str, root: Path = ROOT) -> str | None:
    """The repository module that ``dotted`` (``pipeline.x.y.func``) names or names something
    of: the longest prefix that is a module, when what follows it is defined there; else None."""
    parts = dotted.split(".")
    for end in range(len(parts), 0, -1):
        path = module_file(".".join(parts[:end]), root)
        if path is not None:
            rest = parts[end:]
            return ".".join(parts[:end]) if not rest or rest[0] in _top_level_names(path) else None
    return None


def _ours(module: str) -> bool:
    return module.split(".")[0] in TOPS


def _import_statement(node: ast.Import) -> str:
    statements = []
    for alias in node.names:
        top = alias.name.split(".")[0]
        if top not in TOPS:
            statements.append(f"import {alias.name}" + (f" as {alias.asname}" if alias.asname else ""))
        elif alias.asname:
            statements.append(f"import {PACKAGE}.{alias.name} as {alias.asname}")
        elif "." in alias.name:  # `import a.b` loads a.b and binds a
            statements += [f"import {PACKAGE}.{alias.name}", f"from {PACKAGE} import {top}"]
        else:
            statements.append(f"from {PACKAGE} import {alias.name}")
    return "; ".join(statements)


def _offset(lines: list[str], line: int, column: int) -> int:
    """Character offset of (1-based line, utf-8 byte column) in the joined ``lines``."""
    text = lines[line - 1].encode("utf-8")[:column].decode("utf-8")
    return sum(len(x) for x in lines[: line - 1]) + len(text)


def rewrite_source(source: str, module: str) -> str:
    """``source`` of ``module`` with every absolute import of this repository's packages moved
    under ``scripts``; line numbers unchanged.

    Raises:
        ValueError: the module already uses the name ``scripts``, which the rewrite binds.
    """
    tree = ast.parse(source)
    if any(isinstance(n, ast.Name) and n.id == PACKAGE for n in ast.walk(tree)):
        raise ValueError(f"{module} uses the name {PACKAGE!r}, which vendoring binds; rename it")
    lines = source.splitlines(keepends=True)
    edits: list[tuple[int, int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import) and any(a.name.split(".")[0] in TOPS for a in node.names):
            start = _offset(lines, node.lineno, node.col_offset)
            end = _offset(lines, node.end_lineno, node.end_col_offset)
            edits.append((start, end, _import_statement(node)))
        elif isinstance(node, ast.ImportFrom) and not node.level and _ours(node.module or ""):
            start = _offset(lines, node.lineno, node.col_offset)
            segment = ast.get_source_segment(source, node) or ""
            tokens = tokenize.generate_tokens(io.StringIO(segment).readline)
            name = next(t for t in tokens if t.type == tokenize.NAME and t.string != "from")
            at = start + _offset(segment.splitlines(keepends=True), name.start[0], name.start[1])
            edits.append((at, at, f"{PACKAGE}."))
    out = source
    for start, end, text in sorted(edits, reverse=True):
        out = out[:start] + text + out[end:]
    return out


def check_vendored(source: str, module: str, vendored: set[str], is_package: bool = False) -> list[str]:
    """Problems of a rewritten file: an import of the repository's own names, or of a ``scripts.``
    module that was not vendored (``vendored``: the module names under ``scripts``)."""
    problems = []
    for name in sorted(imported_names(source, f"{PACKAGE}.{module}", is_package)):
        top = name.split(".")[0]
        if top in TOPS:
            problems.append(f"{module}: still imports {name} (would use an installed copy of the repository)")
        elif top == PACKAGE and name != PACKAGE:
            inner = name.split(".", 1)[1]
            if inner not in vendored and ".".join(inner.split(".")[:-1]) not in vendored:
                problems.append(f"{module}: imports {name}, which is not in the bundle's scripts/")
    return problems


def third_party(sources: Iterable[str]) -> set[str]:
    """Top-level names of the packages the vendored ``sources`` import that are not the standard
    library's nor the bundle's own."""
    names: set[str] = set()
    for source in sources:
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and not node.level:
                names.add((node.module or "").split(".")[0])
    return {n for n in names if n and n not in sys.stdlib_module_names and n not in (*TOPS, PACKAGE)}


def distribution(import_name: str) -> str:
    """The installed distribution providing ``import_name`` (``skimage`` -> ``scikit-image``).

    Raises:
        ValueError: no installed distribution provides it, or several do and none has its name.
    """
    try:
        return importlib.metadata.metadata(import_name)["Name"]
    except importlib.metadata.PackageNotFoundError:
        pass
    candidates = importlib.metadata.packages_distributions().get(import_name, [])
    if len(set(candidates)) != 1:
        raise ValueError(
            f"the vendored code imports {import_name!r}, provided by {sorted(set(candidates)) or 'nothing'} "
            "here: install it (the bundle needs its version) before exporting"
        )
    return candidates[0]


def package_versions(import_names: Iterable[str]) -> tuple[dict[str, str], dict[str, str]]:
    """(MONAI's own version fields, ``required_packages_version``) for the imported packages:
    torch, monai and numpy go in ``pytorch_version``, ``monai_version``, ``numpy_version``; the
    others by distribution name, installed versions (a local build suffix like ``+cpu`` dropped)."""
    fields, required = {}, {}
    for name in sorted(set(import_names) | set(SEPARATE_VERSIONS)):
        dist = distribution(name)
        version = importlib.metadata.version(dist).split("+")[0]
        if name in SEPARATE_VERSIONS:
            fields[SEPARATE_VERSIONS[name]] = version
        else:
            required[dist.lower()] = version
    return fields, dict(sorted(required.items()))


def init_source(modules: Iterable[str], commit: str) -> str:
    """``scripts/__init__.py``: imports the modules the configs use as attributes of ``scripts``."""
    names = "".join(f'    "{PACKAGE}.{m}",\n' for m in sorted(set(modules)))
    return (
        '"""This bundle\'s own code: the modules of lgg-segmentation that its inference imports,\n'
        f"at commit {commit}, vendored by ``python -m pipeline export`` with their imports of\n"
        "``pipeline``, ``transforms`` and ``networks`` moved under ``scripts``. configs/inference.json\n"
        "imports this package with scripts/loader.py. Do not edit: metadata.json holds the sha256 of\n"
        'every file here, and import-bundle / verify-bundle refuse a changed one."""\n\n'
        "import importlib\n\n"
        f"MODULES = (\n{names})\n\n"
        "for _name in MODULES:\n"
        "    importlib.import_module(_name)\n"
    )


def write_scripts(out: Path, roots: Iterable[str], commit: str, root: Path = ROOT) -> dict[str, str]:
    """Write ``out/scripts/``: the closure of ``roots``, rewritten and checked, ``__init__.py``
    and ``loader.py``. Returns the file contents by bundle path (``scripts/...``).

    Raises:
        ValueError: a vendored file fails :func:`check_vendored` (nothing is written then).
    """
    roots = sorted(set(roots))
    modules = closure(roots, root)
    files: dict[str, str] = {}
    problems: list[str] = []
    for name, path in modules.items():
        text = rewrite_source(path.read_text(encoding="utf-8"), name)
        problems += check_vendored(text, name, set(modules), path.name == "__init__.py")
        files[f"{PACKAGE}/{path.relative_to(root).as_posix()}"] = text
    if problems:
        raise ValueError("vendoring the inference code failed:\n  " + "\n  ".join(problems))
    files[f"{PACKAGE}/__init__.py"] = init_source(roots, commit)
    files[f"{PACKAGE}/loader.py"] = LOADER.read_text(encoding="utf-8")
    for name, text in files.items():
        target = out / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
    return files
