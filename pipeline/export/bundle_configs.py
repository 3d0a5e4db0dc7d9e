"""The exported bundle's configs, derived from this repository's (one source, names rewritten).

Every name of this repository's code in a config (``$`` expressions, ``$import`` lines,
``_target_``) is moved to the bundle's ``scripts`` package (:mod:`pipeline.export.vendor`), in one
of two styles:

- ``inference.json`` (:func:`inference_config`): MONAI evaluates a config's ``$import`` lines
  before any other item, when ``scripts`` is not importable yet (see
  :mod:`pipeline.export.bundle_loader`). So its imports of the repository are dropped, the
  ``scripts`` item loads the package from ``<bundle_root>/scripts``, expressions reach the code
  through it (``$pipeline.x.f()`` -> ``$@scripts.pipeline.x.f()``), and each component of ours
  gets ``_requires_: "@scripts"`` (``scripts.pipeline.x.C``), so it is built after the package is
  loaded, whichever item MONAI resolves first.
- ``train.json`` and ``evaluate.json`` (:func:`rewritten`): plain ``scripts.`` names
  (``$import scripts.transforms``, ``$scripts.transforms.TiffReader()``). Inference reads the
  training chain (``deterministic_transforms``) from train.json with the bundle's own code, once
  ``scripts`` is loaded; the training and evaluation modules are not vendored, so the rest is the
  record of the recipe, which runs only with this repository (the run's ``config.json`` as
  logged to MLflow, with the original names).

The keys of inference.json that must differ in a bundle are set here: the checkpoint
(``models/model.pt``); the model's identity the outputs name (``model_info``, a constant: what
it is read from in a run folder, a bundle does not have); ``metadata_file`` where inference.json
has the key; the post-processing options chosen from the model's evaluation; and the training
config (``configs/train.json``), the network settings and the image size of the run where
inference.json holds constants for them, not values it reads from the checkpoint's run (for an
exported bundle, its configs/train.json).

:func:`allowed_code` gives verification the code strings export writes.
"""

from __future__ import annotations

import ast
import copy
import json
import re
from collections.abc import Iterator
from typing import Any

from pipeline.export.vendor import PACKAGE, ROOT, TOPS

CONFIGS = ROOT / "bundle" / "configs"
REFERENCE = re.compile(r"@\w*(?:(?:::|#)\w*)*")  # MONAI's id_matcher, with the old '#' separator
LOAD_SCRIPTS = f"$runpy.run_path(os.path.join(@bundle_root, '{PACKAGE}', 'loader.py'))['load']()"
BUNDLE_KEYS = {
    "ckpt_path": "$@bundle_root + '/models/model.pt'",
    "training_config": "$@bundle_root + '/configs/train.json'",
    "metadata_file": "$@bundle_root + '/configs/metadata.json'",  # the model's identity in the outputs
}
ENSEMBLE_LOADER = "pipeline.inference.ensemble.load_ensemble"  # an exported fold ensemble's network
# what a run's merged config holds (a cross-validation fold's: crossval.json)
OVERLAYS = ("train.json", "demo.json", "multi_gpu_train.json", "crossval.json")


def _read(name: str) -> dict:
    return json.loads((CONFIGS / name).read_text())


def _dotted(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> str:
    parts = [node.id]
    while isinstance(parents.get(node), ast.Attribute):
        node = parents[node]
        parts.append(node.attr)
    return ".".join(parts)


def rewrite_expression(code: str, style: str, found: set[str]) -> str | None:
    """``code`` (a ``$`` string) with this repository's names under ``scripts``; None for an
    ``$import`` line the reference style drops. Adds the dotted names used to ``found``.

    Raises:
        ValueError: ``$from <repository module> import name`` in the reference style.
    """
    body = code[1:]
    statement = ast.parse(body.strip()).body[0] if "import" in body else None
    if isinstance(statement, ast.Import | ast.ImportFrom):
        module = statement.names[0].name if isinstance(statement, ast.Import) else statement.module or ""
        if module.split(".")[0] not in TOPS:
            return code
        found.add(module)
        if style == "import":
            return "$" + re.sub(rf"\b{re.escape(module)}\b", f"{PACKAGE}.{module}", body, count=1)
        if isinstance(statement, ast.ImportFrom):
            raise ValueError(
                f"{code!r}: export cannot move a from-import to the bundle's scripts; write "
                "'$import module' and use module.name in the config"
            )
        return None
    refs = REFERENCE.findall(body)
    marked = body
    for i, ref in enumerate(sorted(set(refs), key=len, reverse=True)):
        marked = marked.replace(ref, f"__ref{i}__")
    marks = {f"__ref{i}__": ref for i, ref in enumerate(sorted(set(refs), key=len, reverse=True))}
    tree = ast.parse(marked.strip(), mode="eval")
    indent = len(marked) - len(marked.lstrip())
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    names = [n for n in ast.walk(tree) if isinstance(n, ast.Name) and n.id in TOPS]
    if not names:
        return code
    prefix = f"@{PACKAGE}." if style == "reference" else f"{PACKAGE}."
    lines = marked.strip().splitlines(keepends=True)
    out = marked
    for node in sorted(names, key=lambda n: (n.lineno, n.col_offset), reverse=True):
        found.add(_dotted(node, parents))
        at = indent + sum(len(x) for x in lines[: node.lineno - 1]) + node.col_offset
        out = out[:at] + prefix + out[at:]
    for mark, ref in marks.items():
        out = out.replace(mark, ref)
    return "$" + out


def _target(value: str, found: set[str]) -> str:
    if value.split(".")[0] in TOPS:
        found.add(value)
        return f"{PACKAGE}.{value}"
    return value


def _with_package_import(imports: list) -> list:
    """``$import scripts`` before the first ``$import scripts.x``: MONAI binds ``import a.b`` to
    the name "a.b", so only ``import scripts`` makes ``scripts.x`` usable in expressions."""
    mine = [i for i, v in enumerate(imports) if isinstance(v, str) and v.startswith(f"$import {PACKAGE}.")]
    if not mine or f"$import {PACKAGE}" in imports:
        return imports
    return [*imports[: mine[0]], f"$import {PACKAGE}", *imports[mine[0] :]]


def rewritten(config: Any, style: str = "import", found: set[str] | None = None) -> Any:
    """A copy of ``config`` with this repository's names under ``scripts`` (see the module
    docstring for the two styles); the dotted names it used are added to ``found``."""
    found = set() if found is None else found
    if isinstance(config, dict):
        out = {}
        for key, value in config.items():
            is_target = key == "_target_" or key.endswith("#_target_")  # an overlay's "data#_target_"
            if is_target and isinstance(value, str) and not value.startswith("$"):
                out[key] = _target(value, found)
            else:
                out[key] = rewritten(value, style, found)
            if style == "import" and key.lstrip("+") == "imports" and isinstance(value, list):
                out[key] = _with_package_import(out[key])
        if style == "reference" and str(out.get("_target_", "")).startswith(f"{PACKAGE}."):
            out["_requires_"] = f"@{PACKAGE}"
        return out
    if isinstance(config, list):
        items = [rewritten(v, style, found) for v in config]
        return [v for v, old in zip(items, config) if not (v is None and old is not None)]
    if isinstance(config, str) and config.startswith("$"):
        return rewrite_expression(config, style, found)
    return config


def _derived(value: Any) -> bool:
    """A value inference.json computes from the checkpoint (the run's settings), not a constant."""
    return isinstance(value, str) and value.startswith("$")


def inference_config(
    image_size: int, network_def: dict, options: dict[str, Any] | None = None, folds: int | None = None
) -> tuple[dict, set[str]]:
    """The bundle's inference.json from bundle/configs/inference.json, and the dotted names of this
    repository's code it uses.

    Args:
        image_size: the run's image size.
        network_def: the run's network settings (``_target_`` with the repository's name).
        options: values of existing keys to set (the chosen ``tta``, ``largest_component``, and
            ``model_info``, the model's identity, which a bundle knows at export).
        folds: a fold ensemble of that many members (``export --crossval``): ``network`` is
            :func:`pipeline.inference.ensemble.load_ensemble` of ``models/model.pt``, which holds
            the ensemble's state_dict. Default None: a single model.
    """
    found: set[str] = set()
    source = _read("inference.json")
    config: dict = {}
    for key, value in rewritten(source, "reference", found).items():
        config[key] = value
        if key == "imports":
            config[key] = [*value, *(i for i in ("$import os", "$import runpy") if i not in value)]
        if key == "bundle_root":
            config[PACKAGE] = LOAD_SCRIPTS
    config["ckpt_path"] = BUNDLE_KEYS["ckpt_path"]
    if not _derived(source.get("training_config")):
        config["training_config"] = BUNDLE_KEYS["training_config"]
    if "metadata_file" in source:
        config["metadata_file"] = BUNDLE_KEYS["metadata_file"]
    if not _derived(source.get("image_size")):
        config["image_size"] = int(image_size)
    if any(v is not None for k, v in source.get("network_def", {}).items() if not k.startswith("_")):
        config["network_def"] = rewritten(copy.deepcopy(network_def), "reference", found)
    for key, value in (options or {}).items():
        if key in config:
            config[key] = value
    if folds is not None:
        network = {k: v for k, v in config["network"].items() if k != "crossval"}
        network["_target_"] = _target(ENSEMBLE_LOADER, found)
        config["network"] = {**network, "folds": int(folds)}
    return config, found


def code_strings(config: Any, key: str = "") -> Iterator[tuple[str, str]]:
    """(key path, string) of every string MONAI would run: ``$``/``%`` strings and ``_target_``s."""
    if isinstance(config, dict):
        for k, v in config.items():
            yield from code_strings(v, f"{key}#{k}" if key else str(k))
    elif isinstance(config, list):
        for i, v in enumerate(config):
            yield from code_strings(v, f"{key}#{i}")
    elif isinstance(config, str) and (config.startswith(("$", "%")) or key.endswith("_target_")):
        yield key, config


def allowed_code() -> dict[str, set[str]]:
    """Config file of the bundle -> the code strings export writes into it."""
    network = _read("train.json")["network_def"]
    inference, _ = inference_config(256, network)
    ensemble, _ = inference_config(256, network, folds=2)
    training: set[str] = set()
    for name in OVERLAYS:
        training |= {v for _, v in code_strings(rewritten(_read(name)))}
    return {
        "configs/inference.json": {v for config in (inference, ensemble) for _, v in code_strings(config)},
        "configs/train.json": training,
        "configs/evaluate.json": {v for _, v in code_strings(rewritten(_read("evaluate.json")))},
        "configs/metadata.json": set(),
    }
