"""The exported bundle's layout, shared by export, verify and import.

The bundle folder (and a .zip of it beside the folder) follows the MONAI bundle layout, with its
code in ``scripts/`` as in the MONAI model zoo::

    configs/inference.json   this repository's bundle/configs/inference.json, names moved to scripts/
    configs/metadata.json    package versions, network_data_format, metrics, MLflow run, the chosen
                             post-processing, sha256 of the model files and of every scripts/ file
    configs/logging.conf
    configs/train.json       the run's merged training config (names moved to scripts/): inference
                             reads its preprocessing chain and network settings
    configs/evaluate.json    the evaluation overlay, for the record (needs this repository)
    scripts/                 the inference code of this repository, vendored (pipeline.export.vendor)
    scripts/__init__.py      imports the modules the configs use
    scripts/loader.py        imports scripts/ from its own folder (pipeline.export.bundle_loader)
    models/model.pt          weights only (a state_dict)
    models/model.ts          TorchScript, written by ``monai.bundle.ckpt_export``
    models/model.onnx        ONNX, opset 17, dynamic batch axis
    docs/README.md           model card
    LICENSE

Why the bundle carries code: its inference is this project's own (kaggle TIFF folders, 3-channel
volumes, per-patient sequence folders and DICOM series in; masks in the input's geometry, DICOM
SEG, lesion_volumes.csv, report.html out), which MONAI's transforms alone cannot do. The code is
vendored under ``scripts`` with its imports rewritten (``scripts.pipeline...``), so the bundle
never runs an installed copy of this repository (:mod:`pipeline.export.vendor`), and the configs
are derived from this repository's, not written by hand (:mod:`pipeline.export.bundle_configs`).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BUNDLE = ROOT / "bundle"
SCHEMA = BUNDLE / "schema" / "meta_schema.json"
MODEL_FILES = ("models/model.pt", "models/model.ts", "models/model.onnx")
SCRIPTS = "scripts"
REQUIRED_FILES = (
    "configs/inference.json",
    "configs/metadata.json",
    "configs/logging.conf",
    "configs/train.json",
    *MODEL_FILES,
    f"{SCRIPTS}/__init__.py",
    f"{SCRIPTS}/loader.py",
    "docs/README.md",
    "LICENSE",
)


def sha256(path: str | Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
