"""The exported bundle's ``configs/metadata.json`` and model card (``docs/README.md``).

metadata.json is the repository's bundle/configs/metadata.json with, for this model: the
versions of the packages the bundle's code imports (MONAI's ``monai_version``,
``pytorch_version``, ``numpy_version`` and ``required_packages_version``, computed from the
imports of the vendored ``scripts/`` by :func:`pipeline.export.vendor.package_versions`, plus
``fire``, which ``python -m monai.bundle`` needs), the network's shapes, the metrics, the MLflow
run, the post-processing defaults chosen from the evaluation (``postprocessing``,
:mod:`pipeline.export.choice`), and the sha256 of every model file (``model_files``) and of every
file under ``scripts/`` (``scripts_files``), which import and verification check.
"""

from __future__ import annotations

import importlib.metadata
import json
import time
from pathlib import Path
from string import Template

from pipeline.export.layout import BUNDLE
from pipeline.export.sources import ModelSource

COMMAND_LINE_PACKAGES = ("fire",)  # python -m monai.bundle parses its command line with fire


def build_metadata(
    source: ModelSource,
    settings: dict,
    image_size: int,
    versions: tuple[dict, dict] | None = None,
    postprocessing: dict | None = None,
) -> dict:
    """metadata.json of the export: the repository's, with versions, shapes, metrics and the run.

    Args:
        versions: (MONAI's version fields, ``required_packages_version``) of the vendored code's
            imports. Default None: the repository's recorded ones, with the installed MONAI,
            PyTorch and NumPy.
        postprocessing: the chosen defaults (:func:`pipeline.export.choice.best_option`).
    """
    import monai
    import numpy
    import torch

    meta = json.loads((BUNDLE / "configs" / "metadata.json").read_text())
    meta["monai_version"] = monai.__version__
    meta["pytorch_version"] = torch.__version__.split("+")[0]
    meta["numpy_version"] = numpy.__version__
    if versions is not None:
        fields, required = versions
        meta.update(fields)
        for name in COMMAND_LINE_PACKAGES:
            required.setdefault(name, importlib.metadata.version(name))
        meta["required_packages_version"] = dict(sorted(required.items()))
    multiple = 2 ** (int(settings.get("depth", 5)) - 1)
    for part in ("inputs", "outputs"):
        for spec in meta["network_data_format"][part].values():
            spec["spatial_shape"] = [f"{multiple}*n", f"{multiple}*n"]
    meta["eval_metrics"] = {k: round(v, 6) for k, v in sorted(source.metrics.items())}
    meta["network_settings"] = settings
    meta["image_size"] = image_size
    if postprocessing is not None:
        meta["postprocessing"] = postprocessing
    meta["mlflow"] = source.mlflow
    meta["exported"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    return meta


INTENSITY_TEXT = {
    "slice": "per-slice min-max scaling of all three channels together to [0, 1] (intensity 'slice')",
    "volume": (
        "per patient and channel, clipped to the 1st..99th percentile of the head voxels over all "
        "the patient's slices and scaled to [0, 1] (intensity 'volume')"
    ),
}


def model_card(meta: dict, settings: dict, config: dict) -> str:
    """docs/README.md: bundle/docs/README.md filled in, and what this bundle's code and defaults are."""
    metrics = meta["eval_metrics"] or {"(none recorded)": ""}
    rows = "\n".join(f"| {name} | {value} |" for name, value in metrics.items())
    card = Template((BUNDLE / "docs" / "README.md").read_text()).safe_substitute(
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
        intensity=INTENSITY_TEXT.get(str(config.get("intensity", "slice")), str(config.get("intensity"))),
        metrics_table=rows,
        monai_version=meta["monai_version"],
        pytorch_version=meta["pytorch_version"],
    )
    chosen = meta.get("postprocessing", {})
    packages = ", ".join(f"{k} {v}" for k, v in meta.get("required_packages_version", {}).items())
    return card.rstrip("\n") + (
        "\n\n## This bundle's code and defaults\n"
        f"- `scripts/`: the training repository's inference code ({len(meta.get('scripts_files', {}))} "
        "files, imports moved under `scripts`), so the bundle runs without the repository; "
        "`configs/metadata.json` holds the sha256 of each file.\n"
        f"- Needs Python with MONAI {meta['monai_version']}, PyTorch {meta['pytorch_version']}, "
        f"NumPy {meta['numpy_version']} and {packages}.\n"
        f"- Post-processing defaults: `{chosen.get('option', 'threshold')}` (tta "
        f"{str(chosen.get('tta', False)).lower()}, largest_component "
        f"{str(chosen.get('largest_component', False)).lower()}): {chosen.get('reason', 'not recorded')}. "
        "Override with `--tta` / `--largest_component` on the command line.\n"
    )


def write_json(path: Path, data: object) -> None:
    path.write_text(json.dumps(data, indent=4) + "\n")
