"""Which model made the masks: the ``model_info`` dict the outputs of inference name.

``model_info`` (an argument of :class:`pipeline.inference.writers.MaskWriter` and
:func:`pipeline.inference.workflow.run_inference`) is a plain dict; the keys shown, in order
(:data:`MODEL_KEYS`), are:

- ``bundle_name``, ``bundle_version``: the bundle's metadata.json ``name`` and ``version``;
- ``weights_sha256``: sha256 of the weights file (model.pt), hex;
- ``training_run_id``: the MLflow run id of the training run (``<run>/mlflow_run.json``), and
  ``training_run``: the run folder's name;
- ``validation_volume_dice``: the model's per-volume Dice on validation patients (mean over
  patients, threshold 0.5), from the run's ``evaluation/summary.json`` when an evaluation of
  these very weights ran there (its ``checkpoint`` is ``ckpt_path``; evaluate.json evaluates
  the validation patients unless ``--eval_set all``).

Any value missing or None is shown as "unknown" (:func:`describe`); other keys are shown after
these. :func:`model_identity` builds the dict from a checkpoint path, reading only local files
(no MLflow call, so an inference never waits on a tracking server).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

MODEL_KEYS = (
    "bundle_name",
    "bundle_version",
    "weights_sha256",
    "training_run_id",
    "training_run",
    "validation_volume_dice",
)
UNKNOWN = "unknown"
METADATA = Path(__file__).resolve().parents[2] / "bundle" / "configs" / "metadata.json"


def describe(model_info: Mapping[str, Any] | None) -> dict[str, str]:
    """``model_info`` as ordered text: :data:`MODEL_KEYS` first ("unknown" when absent), then the rest."""
    info = dict(model_info or {})
    keys = [*MODEL_KEYS, *sorted(k for k in info if k not in MODEL_KEYS)]
    out = {}
    for key in keys:
        value = info.get(key)
        if value is None or value == "":
            out[key] = UNKNOWN
        elif isinstance(value, float):
            out[key] = f"{value:.4f}"
        else:
            out[key] = str(value)
    return out


def sha256_of(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def model_identity(
    ckpt_path: str | os.PathLike | None, metadata_file: str | os.PathLike | None = None
) -> dict[str, Any]:
    """``model_info`` for the weights at ``ckpt_path`` (see the module docstring).

    Args:
        ckpt_path: the weights (``<run>/models/model.pt`` for a training run's best model); None
            or a missing file leaves the sha256 and the run unknown.
        metadata_file: the bundle's metadata.json. Default: bundle/configs/metadata.json.
    """
    metadata = _json(Path(metadata_file) if metadata_file else METADATA)
    info: dict[str, Any] = {"bundle_name": metadata.get("name"), "bundle_version": metadata.get("version")}
    if ckpt_path is None or not Path(ckpt_path).is_file():
        return info
    ckpt = Path(ckpt_path).resolve()
    info["weights_sha256"] = sha256_of(ckpt)
    run_dir = ckpt.parent.parent if ckpt.parent.name == "models" else None
    if run_dir is not None and (run_dir / "mlflow_run.json").is_file():
        info["training_run_id"] = _json(run_dir / "mlflow_run.json").get("run_id")
        info["training_run"] = run_dir.name
        summary = _json(run_dir / "evaluation" / "summary.json")
        dice = summary.get("aggregates", {}).get("threshold", {}).get("dice", {}).get("mean")
        evaluated = summary.get("checkpoint")
        same = evaluated is not None and Path(evaluated).resolve() == ckpt
        if same and isinstance(dice, (int, float)):
            info["validation_volume_dice"] = float(dice)
    return info
