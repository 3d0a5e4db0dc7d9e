"""`python -m pipeline export`: a trained model as a MONAI bundle that runs this project's
inference without this repository.

The bundle (:mod:`pipeline.export.layout`) holds the weights (model.pt, and model.ts / model.onnx
for other runtimes), the inference code of this repository vendored as ``scripts/``
(:mod:`pipeline.export.vendor`), configs derived from bundle/configs/*.json with the names moved
to ``scripts`` (:mod:`pipeline.export.bundle_configs`), and metadata.json with the packages that
code imports, the sha256 of every model and script file and the post-processing defaults that
scored best in the model's evaluation (:mod:`pipeline.export.metadata`,
:mod:`pipeline.export.choice`). It is written to a staging folder beside ``--out`` and renamed
when complete, then zipped (also staged).

Where the model comes from (a weights file, an MLflow run, a registered version):
:mod:`pipeline.export.sources`; a cross-validation's fold ensemble (``--crossval``), whose
model.pt / model.ts / model.onnx are the ensemble (:class:`pipeline.inference.ensemble.FoldEnsemble`,
the folds' weights under ``members.<i>.``): :mod:`pipeline.export.crossval_source`. The model
registry (``--register``, ``--alias``): :mod:`pipeline.export.registry`.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import shutil
import tempfile
import time
import warnings
from pathlib import Path

import torch

from pipeline.export.bundle_configs import CONFIGS, inference_config, rewritten
from pipeline.export.choice import best_option
from pipeline.export.crossval_source import ENSEMBLE, crossval_record, ensemble_card, source_from_crossval
from pipeline.export.layout import BUNDLE, MODEL_FILES, sha256
from pipeline.export.metadata import build_metadata, model_card, write_json
from pipeline.export.sources import ModelSource, source_from_checkpoint, source_from_registry, source_from_run
from pipeline.export.vendor import ROOT, longest_module, package_versions, third_party, write_scripts
from pipeline.tracking.logged_model import network_settings
from pipeline.tracking.provenance import git_commit
from pipeline.tracking.uris import default_tracking_uri

logger = logging.getLogger(__name__)

ONNX_OPSET = 17


def _export_onnx(network: torch.nn.Module, path: Path, image_size: int) -> None:
    example = torch.rand(2, network.channels_in, image_size, image_size)
    with warnings.catch_warnings():  # tracer notes on the shape checks, which ONNX does not need
        warnings.simplefilter("ignore")
        # the TorchScript-based exporter: the dynamo one needs onnxscript, not installed offline
        torch.onnx.export(
            network,
            (example,),
            str(path),
            dynamo=False,
            opset_version=ONNX_OPSET,
            input_names=["image"],
            output_names=["pred"],
            dynamic_axes={"image": {0: "batch"}, "pred": {0: "batch"}},
        )


def _vendored_roots(found: set[str]) -> set[str]:
    """The repository modules behind the dotted names the configs use.

    Raises:
        ValueError: a name that is no module of the repository (a typo in a config).
    """
    roots = set()
    for name in found:
        module = longest_module(name)
        if module is None:
            raise ValueError(f"{name} in the bundle configs is no module of this repository")
        roots.add(module)
    return roots


def _identity(out: Path, source: ModelSource) -> dict:
    """The model's identity the outputs name (inference.json's ``model_info``), fixed at export:
    what :func:`pipeline.inference.model_identity.model_identity` reads from a run folder, which a
    bundle does not have. A fold ensemble is named by its cross-validation (the parent run); its
    pooled out-of-fold Dice is that of the single folds, so it is not given as the ensemble's."""
    recorded = json.loads((BUNDLE / "configs" / "metadata.json").read_text())
    folder = source.checkpoint.parent.parent.name if source.checkpoint.parent.name == "models" else None
    ensemble = bool(source.members)
    identity = {
        "bundle_name": recorded.get("name"),
        "bundle_version": recorded.get("version"),
        "weights_sha256": sha256(out / "models" / "model.pt"),
        "training_run_id": source.mlflow.get("run_id"),
        "training_run": source.crossval.get("name") if ensemble else source.mlflow.get("run_name") or folder,
        "validation_volume_dice": None if ensemble else source.metrics.get("eval_threshold_dice_mean"),
        "ensemble": f"mean probability of {len(source.members)} fold models" if ensemble else None,
    }
    return {key: value for key, value in identity.items() if value not in (None, "")}


def _fold_ensemble(source: ModelSource, settings: dict) -> torch.nn.Module:
    """The folds' networks, each with its weights, as one :class:`FoldEnsemble` (eval mode)."""
    from monai.bundle import ConfigParser

    from pipeline.inference.ensemble import FoldEnsemble
    from pipeline.training.checkpoints import load_weights

    members = []
    for member in source.members:
        network = ConfigParser({"network_def": copy.deepcopy(settings)}).get_parsed_content("network_def")
        members.append(load_weights(network, member["checkpoint"]))
    return FoldEnsemble(members).eval()


def _write_bundle(out: Path, source: ModelSource, network: torch.nn.Module, settings: dict, size: int):
    """Every file of the bundle into the folder ``out`` (see :mod:`pipeline.export.layout`)."""
    from monai.bundle import ckpt_export

    for folder in ("configs", "models", "docs"):
        (out / folder).mkdir(parents=True, exist_ok=True)
    torch.save(network.state_dict(), out / "models" / "model.pt")

    chosen = best_option(source.metrics)
    options = {key: chosen[key] for key in ("tta", "largest_component")}
    folds = len(source.members) or None
    identity = _identity(out, source)
    inference, found = inference_config(size, settings, {**options, "model_info": identity}, folds)
    chosen["not_applied"] = sorted(k for k in options if k not in inference)
    train = rewritten({k: v for k, v in source.config.items() if k != "_meta_"}, "import")
    rewritten(source.config.get("deterministic_transforms", []), "import", found)
    write_json(out / "configs" / "inference.json", inference)
    write_json(out / "configs" / "train.json", dict(train, bundle_root="."))
    evaluate = json.loads((CONFIGS / "evaluate.json").read_text())
    write_json(out / "configs" / "evaluate.json", rewritten(evaluate))
    shutil.copy(BUNDLE / "configs" / "logging.conf", out / "configs" / "logging.conf")
    shutil.copy(BUNDLE / "LICENSE", out / "LICENSE")

    files = write_scripts(out, _vendored_roots(found), git_commit(ROOT) or "unknown")
    versions = package_versions(third_party(files.values()))
    meta = build_metadata(source, settings, size, versions, chosen)
    meta["scripts_files"] = {name: {"sha256": sha256(out / name)} for name in sorted(files)}
    if source.members:
        meta["crossval"] = crossval_record(source)
    write_json(out / "configs" / "metadata.json", meta)

    with tempfile.TemporaryDirectory() as tmp:
        network_file = Path(tmp) / "network.json"
        imports = ["$import networks", "$import pipeline.inference.ensemble"]
        network_def = (
            {"_target_": ENSEMBLE, "members": [settings] * len(source.members)} if folds else settings
        )
        write_json(network_file, {"imports": imports, "network_def": network_def})
        ckpt_export(
            net_id="network_def",
            filepath=str(out / "models" / "model.ts"),
            ckpt_file=str(out / "models" / "model.pt"),
            meta_file=str(out / "configs" / "metadata.json"),
            config_file=str(network_file),
        )
    _export_onnx(network, out / "models" / "model.onnx", size)

    meta["model_files"] = {name: {"sha256": sha256(out / name)} for name in MODEL_FILES}
    write_json(out / "configs" / "metadata.json", meta)
    (out / "docs" / "README.md").write_text(model_card(meta, settings, source.config) + ensemble_card(meta))


def export_bundle(source: ModelSource, out_dir: str | Path) -> tuple[Path, Path]:
    """Write the bundle folder ``out_dir`` and ``<out_dir>.zip``; returns both paths.

    The folder is built beside ``out_dir`` under a temporary name and renamed when complete, the
    zip likewise: an export that fails leaves neither behind.

    Raises:
        FileExistsError: ``out_dir`` exists and is not empty.
        ValueError: the checkpoint does not fit the run's network settings, or the code cannot be
            vendored.
    """
    from monai.bundle import ConfigParser

    from pipeline.training.checkpoints import load_weights

    out = Path(out_dir).resolve()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out} exists and is not empty; choose a new --out folder")
    started = time.perf_counter()
    settings = network_settings(copy.deepcopy(source.config))  # MONAI's parser edits what it is given
    image_size = int(ConfigParser(copy.deepcopy(source.config)).get_parsed_content("image_size"))
    if source.members:
        network = _fold_ensemble(source, settings)
    else:
        network = ConfigParser({"network_def": settings}).get_parsed_content("network_def")
        load_weights(network, source.checkpoint).eval()
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    try:
        _write_bundle(stage, source, network, settings, image_size)
        stage.chmod(0o755)  # mkdtemp's 0700 would travel in the zip: the receiving team could not share it
        if out.exists():
            out.rmdir()  # empty, checked above
        os.replace(stage, out)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    partial = out.parent / f".{out.name}.zip-partial"
    try:
        made = shutil.make_archive(str(partial), "zip", root_dir=out.parent, base_dir=out.name)
        archive = out.parent / f"{out.name}.zip"
        os.replace(made, archive)
    finally:
        Path(f"{partial}.zip").unlink(missing_ok=True)
    logger.info("Exported %s and %s in %.1f s", out, archive, time.perf_counter() - started)
    return out, archive


def add_arguments(parser: argparse.ArgumentParser) -> None:
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--run", metavar="RUN_ID", help="MLflow run whose models/model.pt is exported")
    which.add_argument("--checkpoint", metavar="PATH", help="a local model.pt (or training checkpoint)")
    which.add_argument(
        "--crossval",
        metavar="FOLDER_OR_RUN_ID",
        help="a cross-validation's fold ensemble: outputs/crossval/<name> (or a fold run folder), or the "
        "id of its parent MLflow run",
    )
    which.add_argument(
        "--model",
        metavar="URI",
        help="a registered version to export again: models:/NAME@ALIAS or models:/NAME/VERSION",
    )
    parser.add_argument("--out", required=True, metavar="DIR", help="bundle folder to create (and DIR.zip)")
    parser.add_argument(
        "--tracking-uri",
        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or sqlite:///outputs/mlflow.db)",
    )
    parser.add_argument(
        "--register",
        metavar="NAME",
        help="also register the bundle's MLflow Model as a new version of NAME in MLflow's model registry",
    )
    parser.add_argument(
        "--alias", metavar="ALIAS", help="with --register: move ALIAS (e.g. champion) to the new version"
    )


def main(args: argparse.Namespace) -> int:
    from pipeline.export.registry import register_bundle

    if args.crossval and args.register:
        logger.error(
            "--register does not take a fold ensemble yet (the registry's MLflow Model is one network): "
            "export --crossval without --register, or register a single fold with --run"
        )
        return 1
    if args.alias and not args.register:
        logger.error("--alias %s needs --register NAME: the alias moves to the new version", args.alias)
        return 1
    uri = default_tracking_uri(args.tracking_uri)
    with tempfile.TemporaryDirectory() as workdir:
        try:
            if args.run:
                source = source_from_run(args.run, uri, Path(workdir))
            elif args.model:
                source = source_from_registry(args.model, uri, Path(workdir))
            elif args.crossval:
                source = source_from_crossval(args.crossval, args.tracking_uri, Path(workdir))
            else:
                source = source_from_checkpoint(args.checkpoint, args.tracking_uri)
            bundle_dir, archive = export_bundle(source, args.out)
        except (FileNotFoundError, FileExistsError, ValueError) as error:
            logger.error("%s", error)
            return 1
        if args.register:
            version = register_bundle(source, bundle_dir, args.register, uri, alias=args.alias)
            alias = f", alias {args.alias}" if args.alias else ""
            print(f"registered models:/{args.register}/{version.version}{alias}")
    for name in MODEL_FILES:
        print(f"{name}: {(bundle_dir / name).stat().st_size / 1e6:.2f} MB")
    print(f"bundle: {bundle_dir}\narchive: {archive}")
    return 0
