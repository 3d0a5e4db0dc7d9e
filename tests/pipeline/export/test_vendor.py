"""Vendoring: imports moved under ``scripts``, config names rewritten, and the bundle's loader.

The rewrites are compared with results written out by hand; the loader runs in processes of its
own (it registers a ``scripts`` package process-wide).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.export.bundle_configs import rewrite_expression, rewritten
from pipeline.export.vendor import check_vendored, closure, rewrite_source

LOADER = Path(__file__).resolve().parents[3] / "pipeline" / "export" / "bundle_loader.py"


@pytest.mark.parametrize(
    "source, expected",
    [
        ("import transforms\n", "from scripts import transforms\n"),
        ("import pipeline.errors\n", "import scripts.pipeline.errors; from scripts import pipeline\n"),
        ("import networks.unet as u\n", "import scripts.networks.unet as u\n"),
        ("import os, pipeline\n", "import os; from scripts import pipeline\n"),
        ("from pipeline.data import discovery\n", "from scripts.pipeline.data import discovery\n"),
        (
            "from pipeline.atomic import (\n    write_text,\n    write_atomically,\n)\n",
            "from scripts.pipeline.atomic import (\n    write_text,\n    write_atomically,\n)\n",
        ),
        (
            "def f():\n    from transforms.mask import x\n",
            "def f():\n    from scripts.transforms.mask import x\n",
        ),
        ("from .input_record import X\nimport numpy\n", "from .input_record import X\nimport numpy\n"),
        ("import pipelines\nfrom networksx import y\n", "import pipelines\nfrom networksx import y\n"),
    ],
)
def test_imports_of_the_repository_move_under_scripts(source, expected):
    assert rewrite_source(source, "pipeline.inference.probe") == expected


def test_a_module_using_the_name_scripts_is_refused():
    with pytest.raises(ValueError, match="uses the name 'scripts'"):
        rewrite_source("scripts = 1\nimport pipeline\n", "pipeline.x")


def test_the_check_finds_what_the_rewrite_missed():
    vendored = {"pipeline", "pipeline.errors"}
    assert check_vendored("from scripts.pipeline.errors import install\n", "pipeline.x", vendored) == []
    assert (
        "still imports pipeline.errors"
        in check_vendored("import pipeline.errors\n", "pipeline.x", vendored)[0]
    )
    missing = check_vendored("from scripts.pipeline.tracking import uris\n", "pipeline.x", vendored)
    assert missing and "not in the bundle's scripts/" in missing[0]


def test_the_closure_follows_imports_inside_functions_and_packages(tmp_path):
    (tmp_path / "pipeline" / "a").mkdir(parents=True)
    (tmp_path / "pipeline" / "__init__.py").write_text("")
    (tmp_path / "pipeline" / "a" / "__init__.py").write_text("from pipeline.a import b\n")
    (tmp_path / "pipeline" / "a" / "b.py").write_text("def f():\n    from ..c import g\n")
    (tmp_path / "pipeline" / "c.py").write_text("import numpy\n")
    (tmp_path / "pipeline" / "unused.py").write_text("")
    found = closure(["pipeline.a"], tmp_path)
    assert sorted(found) == ["pipeline", "pipeline.a", "pipeline.a.b", "pipeline.c"]


@pytest.mark.parametrize(
    "code, style, expected, names",
    [
        (
            "$pipeline.training.runs.loader_workers()",
            "reference",
            "$@scripts.pipeline.training.runs.loader_workers()",
            {"pipeline.training.runs.loader_workers"},
        ),
        (
            "$pipeline.x.f(@train#dataset, @image_size) + transforms.y",
            "reference",
            "$@scripts.pipeline.x.f(@train#dataset, @image_size) + @scripts.transforms.y",
            {"pipeline.x.f", "transforms.y"},
        ),
        ("$transforms.TiffReader()", "import", "$scripts.transforms.TiffReader()", {"transforms.TiffReader"}),
        ("$@preprocessing.transforms[2:]", "reference", "$@preprocessing.transforms[2:]", set()),
        ("$import pipeline.errors", "reference", None, {"pipeline.errors"}),
        ("$import pipeline.errors", "import", "$import scripts.pipeline.errors", {"pipeline.errors"}),
        ("$import torch", "reference", "$import torch", set()),
        ("$'pipeline.x' + str(1)", "import", "$'pipeline.x' + str(1)", set()),  # a string is no name
    ],
)
def test_config_expressions_name_the_bundles_code(code, style, expected, names):
    found: set[str] = set()
    assert rewrite_expression(code, style, found) == expected
    assert found == names


def test_a_from_import_in_inference_json_is_an_error_saying_what_to_write():
    with pytest.raises(ValueError, match="write '\\$import module'"):
        rewrite_expression("$from pipeline.errors import install", "reference", set())


def test_components_of_ours_wait_for_the_package_and_imports_bind_scripts():
    config = {
        "imports": ["$import os", "$import transforms"],
        "a": {"_target_": "transforms.LesionMaskd", "keys": "label"},
        "b": {"_target_": "Resized", "keys": "image"},
    }
    assert rewritten(config, "reference") == {
        "imports": ["$import os"],
        "a": {"_target_": "scripts.transforms.LesionMaskd", "keys": "label", "_requires_": "@scripts"},
        "b": {"_target_": "Resized", "keys": "image"},
    }
    assert rewritten(config, "import")["imports"] == [
        "$import os",
        "$import scripts",
        "$import scripts.transforms",
    ]


def _package(folder: Path, marker: str) -> Path:
    folder.mkdir(parents=True)
    (folder / "__init__.py").write_text(f"WHO = {marker!r}\n")
    (folder / "loader.py").write_text(LOADER.read_text())
    return folder


def _python(code: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-I", "-c", code], cwd=cwd, capture_output=True, text=True, timeout=60
    )


def test_the_loader_imports_its_own_folder_not_the_working_directorys(tmp_path):
    bundle = _package(tmp_path / "bundle" / "scripts", "bundle")
    _package(tmp_path / "cwd" / "scripts", "working directory")
    code = (
        "import runpy, sys; sys.path.insert(0, '.'); "
        f"first = runpy.run_path({str(bundle / 'loader.py')!r})['load'](); "
        f"again = runpy.run_path({str(bundle / 'loader.py')!r})['load'](); "
        "import scripts; print(first.WHO, again is first, scripts is first)"
    )
    result = _python(code, tmp_path / "cwd")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["bundle", "True", "True"]


def test_the_loader_refuses_another_scripts_package_naming_both(tmp_path):
    bundle = _package(tmp_path / "bundle" / "scripts", "bundle")
    other = _package(tmp_path / "other" / "scripts", "other")
    code = f"import sys; sys.path.insert(0, {str(other.parent)!r}); import scripts; " + (
        f"import runpy; runpy.run_path({str(bundle / 'loader.py')!r})['load']()"
    )
    result = _python(code, tmp_path)
    assert result.returncode == 1
    message = result.stderr.strip().splitlines()[-1]
    assert message.startswith("ImportError") and str(other) in message and str(bundle) in message
    assert "run this bundle in a Python process of its own" in message


def test_a_failing_package_leaves_nothing_imported(tmp_path):
    bundle = _package(tmp_path / "bundle" / "scripts", "bundle")
    (bundle / "part.py").write_text("X = 1\n")
    (bundle / "__init__.py").write_text("import scripts.part\nraise RuntimeError('broken')\n")
    code = (
        "import json, runpy, sys\n"
        "try:\n"
        f"    runpy.run_path({str(bundle / 'loader.py')!r})['load']()\n"
        "except RuntimeError as error:\n"
        "    print(json.dumps([str(error), sorted(k for k in sys.modules if k.startswith('scripts'))]))\n"
    )
    result = _python(code, tmp_path)
    assert json.loads(result.stdout) == ["broken", []], result.stderr


def test_the_bundle_runs_its_sources_not_a_planted_bytecode_cache_and_writes_none(tmp_path):
    """A ``__pycache__`` .pyc whose header matches the source (same mtime and size) is what Python
    would run instead of the source; the loader compiles the verified source and writes no cache."""
    import importlib.util
    import os
    import py_compile

    bundle = _package(tmp_path / "bundle" / "scripts", "bundle")
    (bundle / "sub").mkdir()
    (bundle / "sub" / "__init__.py").write_text("")
    part = bundle / "sub" / "part.py"
    part.write_text("X = 1\n")
    fake = tmp_path / "fake.py"
    fake.write_text("X = 2\n")  # same size
    stat = part.stat()
    os.utime(fake, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    planted = Path(importlib.util.cache_from_source(str(part)))
    py_compile.compile(str(fake), cfile=str(planted), doraise=True)
    before = sorted(p.relative_to(bundle).as_posix() for p in bundle.rglob("*"))
    load = f"import runpy; runpy.run_path({str(bundle / 'loader.py')!r})['load'](); "
    environment = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}

    def python(code: str) -> str:
        command = [sys.executable, "-I", "-c", code]
        result = subprocess.run(command, capture_output=True, text=True, timeout=60, env=environment)
        assert result.returncode == 0, result.stderr
        return result.stdout.strip()

    assert python(load + "import scripts.sub.part as p; print(p.X)") == "1"
    assert sorted(p.relative_to(bundle).as_posix() for p in bundle.rglob("*")) == before  # nothing written
    # the control: Python's own loader runs the planted cache
    plain = f"import sys; sys.path.insert(0, {str(bundle.parent)!r}); "
    assert python(plain + "import scripts.sub.part as p; print(p.X)") == "2"
