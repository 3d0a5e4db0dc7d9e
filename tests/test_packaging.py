"""Packaging and docs: the two dependency lists cannot drift apart; documented servers stay on loopback."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import yaml
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]


def _pyproject_requirements() -> dict[str, Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    lines = project["dependencies"] + project["optional-dependencies"]["dev"]
    return {Requirement(line).name.lower(): Requirement(line) for line in lines}


def _environment_requirements() -> dict[str, Requirement]:
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(item["pip"] for item in env["dependencies"] if isinstance(item, dict))
    reqs = {}
    for line in pip_section:
        if line.startswith("-"):  # index options and the editable install of the project itself
            continue
        req = Requirement(line)
        reqs[req.name.lower()] = req
    return reqs


def test_environment_yml_lists_the_same_packages_as_pyproject():
    assert set(_environment_requirements()) == set(_pyproject_requirements())


def test_environment_yml_versions_agree_with_pyproject():
    pyproject = _pyproject_requirements()
    for name, env_req in _environment_requirements().items():
        py_req = pyproject[name]
        if str(env_req.specifier) == str(py_req.specifier):
            continue
        # the only allowed difference: an exact pin (torch's CPU build) inside pyproject's range
        pins = [s.version for s in env_req.specifier if s.operator == "=="]
        assert pins, f"{name}: environment.yml has {env_req.specifier}, pyproject.toml {py_req.specifier}"
        assert py_req.specifier.contains(pins[0]), f"{name}=={pins[0]} is outside {py_req.specifier}"


def test_environment_yml_uses_python_311():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    assert "python=3.11" in env["dependencies"]


def test_makefile_pins_cpu_torch_before_the_project_install():
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^TORCH_SPEC \?= torch==2\.13\.0$", makefile, re.M)
    torch_line = makefile.index('pip install --quiet "$(TORCH_SPEC)"')
    project_line = makefile.index('pip install --quiet -e ".[dev]"')
    assert torch_line < project_line


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    assert "make test" in readme
    assert "make test" in (ROOT / ".ci/run").read_text()


def test_every_documented_mlflow_server_binds_to_loopback():
    """The MLflow UI/server commands we tell users to run listen on 127.0.0.1 only (issue #7)."""
    commands = []
    for doc in [ROOT / "README.md", ROOT / "Makefile", *sorted((ROOT / "bundle").rglob("*.md"))]:
        commands += [
            line for line in doc.read_text().splitlines() if re.search(r"\bmlflow (ui|server)\b", line)
        ]
    assert commands, "the README documents how to open the MLflow UI"
    for line in commands:
        assert re.search(r"--host 127\.0\.0\.1\b", line), line


def test_readme_warns_that_bundle_configs_run_code():
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Security note", 1)[1]
    assert "execute arbitrary Python" in section and "trust" in section
