"""Where an export comes from: a local weights file and its run folder, an MLflow run, or a
registered model version (``models:/NAME@ALIAS``, ``models:/NAME/VERSION``)."""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.export.layout import BUNDLE

__all__ = [
    "ModelSource",
    "source_from_checkpoint",
    "source_from_registry",
    "source_from_run",
    "summary_file_metrics",
]

logger = logging.getLogger(__name__)


@dataclass
class ModelSource:
    """What is exported: a weights file and what is known about the run that trained it.

    Attributes:
        checkpoint: local weights file (``model.pt`` state_dict or a training checkpoint).
        config: the run's merged training config (``config.json`` of the run folder or MLflow artifact).
        metrics: metric name -> value (MLflow run metrics, evaluation summary).
        mlflow: ``{"run_id", "tracking_uri", "experiment", "run_name"}`` or empty when unknown (for
            a fold ensemble: the cross-validation's parent run).
        members: for a fold ensemble (``export --crossval``), per fold ``{"fold", "checkpoint",
            "config", "run", "run_id", "sha256"}``; empty for a single model
            (:mod:`pipeline.export.crossval_source`).
        crossval: for a fold ensemble, ``{"name", "folds"}`` (and ``"folder"`` when local).
    """

    checkpoint: Path
    config: dict
    metrics: dict[str, float] = field(default_factory=dict)
    mlflow: dict[str, str] = field(default_factory=dict)
    members: list[dict[str, Any]] = field(default_factory=list)
    crossval: dict[str, Any] = field(default_factory=dict)


def _run_metrics(client: Any, run_id: str) -> tuple[dict[str, float], dict[str, str]]:
    run = client.get_run(run_id)
    keep = ("best_val_volume_dice", "val_volume_dice", "val_dice", "val_bce", "train_loss")
    metrics = {k: float(v) for k, v in run.data.metrics.items() if k in keep or k.startswith("eval_")}
    info = {"run_id": run_id, "run_name": run.info.run_name or ""}
    experiment = client.get_experiment(run.info.experiment_id)
    info["experiment"] = experiment.name if experiment else ""
    return metrics, info


def summary_file_metrics(path: Path) -> dict[str, float]:
    """The per-volume Dice aggregates of a summary.json (evaluate.json's, or a cross-validation's
    pooled one) as ``eval_<option>_dice_<mean|median>``, and ``eval_patients``; {} when absent."""
    if not path.is_file():
        return {}
    summary = json.loads(path.read_text())
    out = {"eval_patients": float(summary.get("n_patients", 0))}
    for variant, stats in summary.get("aggregates", {}).items():
        for stat in ("mean", "median"):
            value = stats.get("dice", {}).get(stat)
            if value is not None:
                out[f"eval_{variant.replace('+', '_')}_dice_{stat}"] = float(value)
    return out


def source_from_run(run_id: str, tracking_uri: str, workdir: Path) -> ModelSource:
    """Download ``models/model.pt`` and ``config.json`` of an MLflow run (local store or server)."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    metrics, info = _run_metrics(client, run_id)
    files = {}
    for artifact in ("models/model.pt", "config.json"):
        try:
            files[artifact] = Path(client.download_artifacts(run_id, artifact, str(workdir)))
        except Exception as error:
            raise FileNotFoundError(
                f"MLflow run {run_id} at {tracking_uri} has no artifact {artifact} ({error}); "
                "runs log it when training completes. Export a local file with --checkpoint instead."
            ) from error
    return ModelSource(
        checkpoint=files["models/model.pt"],
        config=json.loads(files["config.json"].read_text()),
        metrics=metrics,
        mlflow=dict(info, tracking_uri=tracking_uri),
    )


def _model_version(client: Any, model_uri: str) -> Any:
    """The version named by ``models:/NAME@ALIAS`` or ``models:/NAME/VERSION``."""
    match = re.fullmatch(r"models:/([^/@]+)(?:@([^/]+)|/(\d+))", model_uri)
    if match is None:
        raise ValueError(
            f"--model {model_uri!r} is not a registered version; expected models:/NAME@ALIAS "
            "(e.g. models:/lgg-unet@champion) or models:/NAME/VERSION"
        )
    name, alias, number = match.groups()
    return client.get_model_version_by_alias(name, alias) if alias else client.get_model_version(name, number)


def source_from_registry(model_uri: str, tracking_uri: str, workdir: Path) -> ModelSource:
    """The weights and training config of a registered version's MLflow Model, and its run's metrics.

    Raises:
        ValueError: ``model_uri`` is not ``models:/NAME@ALIAS`` or ``models:/NAME/VERSION``.
        FileNotFoundError: the version, alias or its model files are not in the registry.
    """
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    try:
        version = _model_version(client, model_uri)
        location = client.get_model_version_download_uri(version.name, version.version)
        folder = Path(
            mlflow.artifacts.download_artifacts(
                artifact_uri=location, dst_path=str(workdir / "registered"), tracking_uri=tracking_uri
            )
        )
    except mlflow.exceptions.MlflowException as error:
        raise FileNotFoundError(
            f"{model_uri} not found at {tracking_uri} ({str(error).splitlines()[0][:200]}); list the "
            "versions with MlflowClient().search_model_versions(\"name='NAME'\") or register one with "
            "python -m pipeline export ... --register NAME"
        ) from error
    weights, config = folder / "artifacts" / "model.pt", folder / "artifacts" / "config.json"
    if not weights.is_file() or not config.is_file():
        raise FileNotFoundError(
            f"{model_uri} (version {version.version}, source {version.source}) holds no artifacts/model.pt "
            "and artifacts/config.json: it was not registered by python -m pipeline export --register"
        )
    metrics, info = _run_metrics(client, version.run_id) if version.run_id else ({}, {})
    info = dict(info, registered_model=version.name, model_version=str(version.version))
    return ModelSource(
        checkpoint=weights,
        config=json.loads(config.read_text()),
        metrics=metrics,
        mlflow=dict(info, tracking_uri=tracking_uri),
    )


def source_from_checkpoint(checkpoint: str | Path, tracking_uri: str | None = None) -> ModelSource:
    """A local weights file; its run folder (``<run>/models/<file>``) gives config, run id and metrics."""
    path = Path(checkpoint).resolve()
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist; pass --checkpoint <run>/models/model.pt")
    run_dir = path.parent.parent
    config_file = run_dir / "config.json"
    if config_file.is_file():
        config = json.loads(config_file.read_text())
    else:
        logger.warning("%s not found: taking the network settings of bundle/configs/train.json", config_file)
        config = json.loads((BUNDLE / "configs" / "train.json").read_text())
    metrics = summary_file_metrics(run_dir / "evaluation" / "summary.json")
    source = ModelSource(checkpoint=path, config=config, metrics=metrics)
    run_file = run_dir / "mlflow_run.json"
    if run_file.is_file():
        record = json.loads(run_file.read_text())
        uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or record.get("tracking_uri")
        try:
            import mlflow

            metrics, info = _run_metrics(mlflow.MlflowClient(tracking_uri=uri), record["run_id"])
            source.metrics = {**metrics, **source.metrics}
            source.mlflow = dict(info, tracking_uri=uri)
        except Exception as error:  # the bundle is still useful without MLflow
            logger.warning("MLflow run %s not readable at %s (%s)", record.get("run_id"), uri, error)
            source.mlflow = {"run_id": record.get("run_id", ""), "tracking_uri": uri or ""}
    return source
