"""`python -m pipeline export`: a trained model as a MONAI bundle another team runs with MONAI alone.

What the bundle holds and why its inference.json needs no code of ours: :mod:`pipeline.export.layout`.
Where the model comes from (a weights file, an MLflow run, a registered version):
:mod:`pipeline.export.sources`. The model registry (``--register``, ``--alias``):
:mod:`pipeline.export.registry`.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import tempfile
import time
import warnings
from pathlib import Path
from string import Template
from typing import Any

import torch

from pipeline.export.layout import BUNDLE, MODEL_FILES, sha256, standalone_inference_config
from pipeline.export.sources import ModelSource, source_from_checkpoint, source_from_registry, source_from_run
from pipeline.tracking.logged_model import network_settings
from pipeline.tracking.uris import default_tracking_uri

logger = logging.getLogger(__name__)

ONNX_OPSET = 17


def build_metadata(source: ModelSource, settings: dict, image_size: int) -> dict:
    """metadata.json of the export: the repository's, with versions, shapes, metrics and the run."""
    import ignite
    import monai
    import numpy
    import PIL

    meta = json.loads((BUNDLE / "configs" / "metadata.json").read_text())
    meta["monai_version"] = monai.__version__
    meta["pytorch_version"] = torch.__version__.split("+")[0]
    meta["numpy_version"] = numpy.__version__
    meta["required_packages_version"] = {"pytorch-ignite": ignite.__version__, "pillow": PIL.__version__}
    multiple = 2 ** (int(settings.get("depth", 5)) - 1)
    for part in ("inputs", "outputs"):
        for spec in meta["network_data_format"][part].values():
            spec["spatial_shape"] = [f"{multiple}*n", f"{multiple}*n"]
    meta["eval_metrics"] = {k: round(v, 6) for k, v in sorted(source.metrics.items())}
    meta["network_settings"] = settings
    meta["image_size"] = image_size
    meta["mlflow"] = source.mlflow
    meta["exported"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    return meta


def _model_card(meta: dict, settings: dict, config: dict) -> str:
    metrics = meta["eval_metrics"] or {"(none recorded)": ""}
    rows = "\n".join(f"| {name} | {value} |" for name, value in metrics.items())
    return Template((BUNDLE / "docs" / "README.md").read_text()).safe_substitute(
        version=meta["version"],
        exported=meta["exported"],
        run_id=meta["mlflow"].get("run_id") or "unknown",
        run_name=meta["mlflow"].get("run_name") or "unknown",
        tracking_uri=meta["mlflow"].get("tracking_uri") or "unknown",
        network=", ".join(f"{k}={v}" for k, v in settings.items() if k != "_target_"),
        image_size=meta["image_size"],
        size_multiple=meta["network_data_format"]["inputs"]["image"]["spatial_shape"][0],
        epochs=config.get("epochs", "?"),
        learning_rate=config.get("learning_rate", "?"),
        batch_size=config.get("batch_size", "?"),
        phantom=str(config.get("dataset_dir") == config.get("phantom_dir")),
        metrics_table=rows,
        monai_version=meta["monai_version"],
        pytorch_version=meta["pytorch_version"],
    )


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


def export_bundle(source: ModelSource, out_dir: str | Path) -> tuple[Path, Path]:
    """Write the bundle folder ``out_dir`` and ``<out_dir>.zip``; returns both paths.

    Raises:
        FileExistsError: ``out_dir`` exists and is not empty.
        ValueError: the checkpoint does not fit the run's network settings.
    """
    from monai.bundle import ConfigParser, ckpt_export

    from pipeline.training.checkpoints import load_weights

    out = Path(out_dir).resolve()
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} exists and is not empty; choose a new --out folder")
    started = time.perf_counter()
    settings = network_settings(source.config)
    image_size = int(ConfigParser(source.config).get_parsed_content("image_size"))
    network = ConfigParser({"network_def": settings}).get_parsed_content("network_def")
    load_weights(network, source.checkpoint).eval()
    for folder in ("configs", "models", "docs"):
        (out / folder).mkdir(parents=True, exist_ok=True)

    torch.save(network.state_dict(), out / "models" / "model.pt")
    meta = build_metadata(source, settings, image_size)
    _write_json(out / "configs" / "metadata.json", meta)
    _write_json(
        out / "configs" / "inference.json",
        standalone_inference_config(image_size, training_config=source.config),
    )
    train = {k: v for k, v in source.config.items() if k != "_meta_"}
    _write_json(out / "configs" / "train.json", dict(train, bundle_root="."))
    shutil.copy(BUNDLE / "configs" / "evaluate.json", out / "configs" / "evaluate.json")
    shutil.copy(BUNDLE / "configs" / "logging.conf", out / "configs" / "logging.conf")
    shutil.copy(BUNDLE / "LICENSE", out / "LICENSE")

    with tempfile.TemporaryDirectory() as tmp:
        network_file = Path(tmp) / "network.json"
        _write_json(network_file, {"imports": ["$import networks"], "network_def": settings})
        ckpt_export(
            net_id="network_def",
            filepath=str(out / "models" / "model.ts"),
            ckpt_file=str(out / "models" / "model.pt"),
            meta_file=str(out / "configs" / "metadata.json"),
            config_file=str(network_file),
        )
    _export_onnx(network, out / "models" / "model.onnx", image_size)

    meta["model_files"] = {name: {"sha256": sha256(out / name)} for name in MODEL_FILES}
    _write_json(out / "configs" / "metadata.json", meta)
    (out / "docs" / "README.md").write_text(_model_card(meta, settings, source.config))
    archive = Path(shutil.make_archive(str(out), "zip", root_dir=out.parent, base_dir=out.name))
    logger.info("Exported %s and %s in %.1f s", out, archive, time.perf_counter() - started)
    return out, archive


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=4) + "\n")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--run", metavar="RUN_ID", help="MLflow run whose models/model.pt is exported")
    which.add_argument("--checkpoint", metavar="PATH", help="a local model.pt (or training checkpoint)")
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
