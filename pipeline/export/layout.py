"""The exported bundle's layout, shared by export, verify and import.

The bundle folder (and a .zip of it beside the folder) follows the MONAI bundle layout::

    configs/inference.json   self-contained: MONAI transforms and the TorchScript model only
    configs/metadata.json    versions, network_data_format, metrics, MLflow run, sha256 of the models
    configs/logging.conf
    configs/train.json       the run's merged training config, for reproduction (needs this repository)
    configs/evaluate.json    the evaluation overlay, for reproduction (needs this repository)
    models/model.pt          weights only (a state_dict)
    models/model.ts          TorchScript, written by ``monai.bundle.ckpt_export``
    models/model.onnx        ONNX, opset 17, dynamic batch axis
    docs/README.md           model card
    LICENSE

Why the exported inference.json needs no code of ours: the network is the TorchScript file
(``torch.jit.load``), and the preprocessing is the training chain rewritten for MONAI alone
(:func:`pipeline.inference.preprocessing.standalone_transforms`: PILReader with
``reverse_indexing=False``, as MONAI's default swaps rows and columns); PILWriter likewise.
The probabilities go back to the slice's size through
``Invertd`` of a bilinear resize recorded on a copy of the image (``geometry``), which is what
:class:`pipeline.inference.writers.MaskWriter` does (bilinear, align_corners False), then ``> threshold``.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from pipeline.inference.preprocessing import standalone_transforms

ROOT = Path(__file__).resolve().parents[2]
BUNDLE = ROOT / "bundle"
SCHEMA = BUNDLE / "schema" / "meta_schema.json"
MODEL_FILES = ("models/model.pt", "models/model.ts", "models/model.onnx")
REQUIRED_FILES = (
    "configs/inference.json",
    "configs/metadata.json",
    "configs/logging.conf",
    *MODEL_FILES,
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


def standalone_inference_config(image_size: int, threshold: float = 0.5, training_config: Any = None) -> dict:
    """inference.json of the exported bundle: MONAI + torch only, TIFF slices in, TIFF masks out.

    Args:
        image_size: side of the square the network sees.
        threshold: probability above which a pixel is lesion. Default 0.5.
        training_config: the training config whose preprocessing chain the bundle gets (a path
            or a dict: a run's merged config.json). Default None: bundle/configs/train.json.
    """
    return {
        "imports": ["$import glob", "$import os", "$import numpy", "$import torch"],
        "bundle_root": ".",
        "dataset_dir": "$@bundle_root + '/data'",
        "output_dir": "$@bundle_root + '/eval'",
        "image_size": image_size,
        "threshold": threshold,
        "batch_size": 8,
        "num_workers": 0,
        "device": "$torch.device('cuda' if torch.cuda.is_available() else 'cpu')",
        "network_def": "$torch.jit.load(@bundle_root + '/models/model.ts', map_location='cpu')",
        "network": "$@network_def.to(@device)",
        "datalist": "$[{'image': f} for f in sorted(glob.glob(os.path.join(@dataset_dir, '**', '*.tif'), "
        "recursive=True)) if not f.endswith('_mask.tif')]",
        "preprocessing": {"_target_": "Compose", "transforms": standalone_transforms(training_config)},
        "dataset": {"_target_": "Dataset", "data": "@datalist", "transform": "@preprocessing"},
        "dataloader": {
            "_target_": "DataLoader",
            "dataset": "@dataset",
            "batch_size": "@batch_size",
            "shuffle": False,
            "num_workers": "@num_workers",
        },
        "inferer": {"_target_": "SimpleInferer"},
        "saver": {
            "_target_": "SaveImaged",
            "keys": "pred",
            "output_dir": "@output_dir",
            "output_postfix": "mask",
            "output_ext": ".tif",
            "output_dtype": "$numpy.uint8",
            "scale": 255,
            "resample": False,
            "data_root_dir": "@dataset_dir",
            "separate_folder": False,
            "writer": "PILWriter",
            "print_log": False,
        },
        "postprocessing": {
            "_target_": "Compose",
            "transforms": [
                {"_target_": "Activationsd", "keys": "pred", "sigmoid": True},
                {
                    "_target_": "Invertd",
                    "keys": "pred",
                    "transform": "@preprocessing",
                    "orig_keys": "geometry",
                    "nearest_interp": False,
                },
                {"_target_": "Lambdad", "keys": "pred", "func": "$lambda p: (p > @threshold).float()"},
                "$@saver.set_options(write_kwargs={'reverse_indexing': False})",
            ],
        },
        "handlers": [],
        "evaluator": {
            "_target_": "SupervisedEvaluator",
            "device": "@device",
            "val_data_loader": "@dataloader",
            "network": "@network",
            "inferer": "@inferer",
            "postprocessing": "@postprocessing",
            "val_handlers": "@handlers",
        },
        "initialize": [],
        "run": ["$@evaluator.run()"],
        "finalize": [],
    }
