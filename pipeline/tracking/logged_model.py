"""The trained network as an MLflow Model: a pyfunc "logged model" linked to its run.

The model is "models from code" (:mod:`pipeline.tracking.pyfunc_model` is the code MLflow runs to
load it), so loading unpickles nothing and works under MLflow's default safety settings, also with
``MLFLOW_ALLOW_PICKLE_DESERIALIZATION=false``. What it holds::

    MLmodel                     pyfunc flavor, model_config, signature, the logged model's id
    pyfunc_model.py             the code (LesionSegmenter)
    code/networks/              the network's package, so no checkout of this repository is needed
    artifacts/model.pt          the weights: a plain state_dict (loaded weights-only)
    artifacts/config.json       the run's merged training config (``export --model`` rebuilds the
                                bundle from it)
    input_example.json, serving_input_example.json, requirements.txt, python_env.yaml, ...

The model config (``network`` settings, ``image_size``, ``threshold``, ``batch_size``, ``device``)
is in the MLmodel file and in the logged model's params; ``mlflow.pyfunc.load_model(uri,
model_config={"threshold": 0.4})`` overrides any of them. The run lists the model as an output at the step
(epoch) of the weights, and the run's validation metrics of that step (``val_*``, ``best_val_*``)
and evaluation metrics (``eval_*``) are linked to it.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.tracking.provenance import flatten

MODEL_CODE = Path(__file__).with_name("pyfunc_model.py")
THRESHOLD = 0.5
LINKED_PREFIXES = ("val_", "best_val_", "eval_")

# MLflow copies the model's files with its artifact download, whose progress bars would land in
# the training log (two per model)
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def network_settings(config: dict) -> dict:
    """The ``network_def`` of a merged training config with references resolved."""
    from monai.bundle import ConfigParser

    parser = ConfigParser(config)
    return {key: parser.get_parsed_content(f"network_def#{key}") for key in config["network_def"]}


def model_config(training_config: dict, threshold: float = THRESHOLD, batch_size: int = 8) -> dict:
    """The logged model's config: ``network`` (``_target_`` and arguments), ``image_size``,
    ``threshold``, ``batch_size`` and ``device`` (None: CUDA when available), from a run's merged
    training config. MLflow lets a loader override only the keys the model holds.

    Raises:
        ValueError: ``threshold`` outside (0, 1) or ``batch_size`` < 1.
    """
    from monai.bundle import ConfigParser

    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold must be in (0, 1), not {threshold}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, not {batch_size}")
    image_size = int(ConfigParser(training_config).get_parsed_content("image_size"))
    network = network_settings(training_config)
    return {
        "network": network,
        "image_size": image_size,
        "threshold": threshold,
        "batch_size": batch_size,
        "device": None,
    }


def signature(channels: int = 3) -> Any:
    """Input float32 ``(-1, channels, -1, -1)``; outputs ``probabilities`` float32 and ``mask``
    uint8, both ``(-1, 1, -1, -1)``."""
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    def spec(dtype: type, name: str | None = None, c: int = 1) -> TensorSpec:
        return TensorSpec(np.dtype(dtype), (-1, c, -1, -1), name)

    return ModelSignature(
        inputs=Schema([spec(np.float32, c=channels)]),
        outputs=Schema([spec(np.float32, "probabilities"), spec(np.uint8, "mask")]),
    )


def input_example(image_size: int, channels: int = 3) -> np.ndarray:
    """One synthetic prepared slice, ``(1, channels, S, S)`` in [0, 1]: a bright disc on a dark
    ellipse (no patient data goes into the model). Values have two decimals, to keep the JSON small."""
    axis = (np.arange(image_size, dtype=np.float32) + 0.5) / image_size - 0.5
    y, x = np.meshgrid(axis, axis, indexing="ij")
    head = ((x / 0.42) ** 2 + (y / 0.48) ** 2 < 1) * 0.4
    lesion = ((x - 0.12) ** 2 + (y + 0.1) ** 2 < 0.08**2) * 0.5
    slice_ = np.round(head + lesion, 2).astype(np.float32)
    return np.repeat(slice_[None, None], channels, axis=1)


def requirements() -> list[str]:
    """The packages the model needs, pinned to this environment's versions."""
    import mlflow
    import torch

    return [
        f"mlflow=={mlflow.__version__}",
        f"torch=={torch.__version__.split('+')[0]}",
        f"numpy=={np.__version__}",
    ]


def save_pyfunc(
    path: str | Path, weights: str | Path, training_config: dict, mlflow_model: Any = None
) -> Path:
    """Write the MLflow Model folder ``path`` (which must not exist) of ``weights`` (a state_dict).

    Args:
        path: the model folder to create.
        weights: ``model.pt``, a plain state_dict of the network of ``training_config``.
        training_config: the run's merged training config.
        mlflow_model: the ``mlflow.models.Model`` to fill (a logged model's id and run). Default
            None: a standalone model.
    """
    import mlflow

    import networks

    config = model_config(training_config)
    with tempfile.TemporaryDirectory() as tmp:
        config_file = Path(tmp) / "config.json"
        config_file.write_text(json.dumps(training_config, indent=2, sort_keys=True))
        mlflow.pyfunc.save_model(
            path=str(path),
            python_model=str(MODEL_CODE),
            artifacts={"weights": str(weights), "training_config": str(config_file)},
            model_config=config,
            code_paths=[str(Path(networks.__file__).parent)],
            signature=signature(int(config["network"].get("channels_in", 3))),
            input_example=input_example(config["image_size"], int(config["network"].get("channels_in", 3))),
            pip_requirements=requirements(),
            mlflow_model=mlflow_model,
        )
    return Path(path)


def linked_metrics(client: Any, run_id: str, step: int, model_id: str) -> list[Any]:
    """The run's ``val_*``/``best_val_*`` metrics of ``step`` and its latest ``eval_*`` metrics,
    as the same metric values (key, value, timestamp, step) carrying ``model_id``."""
    from mlflow.entities import Metric

    out = []
    for key in sorted(client.get_run(run_id).data.metrics):
        if not key.startswith(LINKED_PREFIXES):
            continue
        history = client.get_metric_history(run_id, key)
        chosen = [m for m in history if m.step == step] if not key.startswith("eval_") else history
        if chosen:
            last = max(chosen, key=lambda m: m.timestamp)
            out.append(Metric(key, last.value, last.timestamp, last.step, model_id=model_id, run_id=run_id))
    return out


def log_model(
    client: Any,
    run_id: str,
    weights: str | Path,
    training_config: dict,
    step: int = 0,
    name: str = "unet",
    tags: dict[str, str] | None = None,
) -> Any:
    """Log ``weights`` as the MLflow Model ``name`` of the run ``run_id``; the ``LoggedModel`` (READY).

    Args:
        client: an ``MlflowClient`` of the run's tracking store.
        run_id: the run that trained the weights (the model's source run).
        weights: ``model.pt``, a plain state_dict.
        training_config: the run's merged training config.
        step: the epoch of the weights: the run's validation metrics of that epoch are linked to
            the model. Default 0.
        name: the logged model's name. Default "unet".
        tags: extra tags of the logged model. Default None.

    Raises:
        whatever MLflow raises; a model created before the failure is marked FAILED.
    """
    from mlflow.entities import LoggedModelOutput
    from mlflow.models import Model

    config = model_config(training_config)
    params = {k: str(v) for k, v in flatten(config).items() if v is not None}
    experiment_id = client.get_run(run_id).info.experiment_id
    logged = client.create_logged_model(
        experiment_id, name=name, source_run_id=run_id, tags=tags, params=params, model_type="segmentation"
    )
    try:
        with tempfile.TemporaryDirectory() as tmp:
            mlflow_model = Model(
                artifact_path=logged.artifact_location,
                run_id=run_id,
                model_uuid=logged.model_id,
                model_id=logged.model_id,
            )
            folder = save_pyfunc(Path(tmp) / "model", weights, training_config, mlflow_model)
            client.log_model_artifacts(logged.model_id, str(folder))
        client.log_outputs(run_id, [LoggedModelOutput(logged.model_id, step)])
        metrics = linked_metrics(client, run_id, step, logged.model_id)
        if metrics:
            client.log_batch(run_id, metrics=metrics)
    except Exception:
        try:
            client.finalize_logged_model(logged.model_id, "FAILED")
        except Exception:  # the store that failed may refuse this too; the first error matters
            pass
        raise
    return client.finalize_logged_model(logged.model_id, "READY")


def download_model(client: Any, model_id: str, dst: str | Path) -> Path:
    """Download the logged model ``model_id`` of ``client``'s store into ``dst``; the model folder.

    (``mlflow.artifacts.download_artifacts("models:/...")`` resolves the model through the global
    tracking URI, whatever ``tracking_uri`` it is given: the model's own location is used here.)
    """
    import mlflow

    location = client.get_logged_model(model_id).artifact_location
    return Path(
        mlflow.artifacts.download_artifacts(
            artifact_uri=location, dst_path=str(dst), tracking_uri=client.tracking_uri
        )
    )
