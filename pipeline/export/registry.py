"""`export --register NAME [--alias ALIAS]`: an exported bundle as a version in MLflow's model registry.

The bundle's files are logged to its run (``bundle/``), its ``model.pt`` is logged as the run's
MLflow Model (:mod:`pipeline.tracking.logged_model`: pyfunc, loadable and servable), and a new
version of the registered model ``NAME`` is created from that model, with:

- tags: the sha256 of every model file of the bundle (``sha256.models/model.pt``, ...), the
  metrics (``best_val_volume_dice``, ``eval_*``), the bundle's version and ``logged_model_id``;
- description: the evaluation's per-volume Dice of each post-processing option (mean and median
  over the patients), the best validation per-volume Dice and the run;
- ``--alias ALIAS`` (e.g. champion) moved to it, so that ``models:/NAME@ALIAS`` names it.

A checkpoint without a known run gets a run ``export-<time>`` of its own.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from pipeline.evaluation.volume_evaluation import VARIANTS
from pipeline.export.layout import MODEL_FILES
from pipeline.export.sources import ModelSource
from pipeline.tracking.logged_model import log_model

logger = logging.getLogger(__name__)

EXPERIMENT = "lgg-segmentation"
MODEL_VERSIONS_TAG = "mlflow.modelVersions"  # the logged model's versions, as mlflow.register_model writes it
DESCRIPTION = "LGG FLAIR abnormality segmentation (MONAI bundle and MLflow pyfunc model)"


def best_epoch(client: Any, run_id: str, key: str = "best_val_volume_dice") -> int:
    """The epoch whose weights are ``model.pt``: the first step at which ``key`` reached its final
    best value (0 when the run has no such metric)."""
    history = sorted(client.get_metric_history(run_id, key), key=lambda m: (m.step, m.timestamp))
    if not history:
        return 0
    best = max(m.value for m in history)
    return next(m.step for m in history if m.value == best)


def version_description(source: ModelSource, run_id: str) -> str:
    """The evaluation's per-volume Dice of each option, the best validation Dice and the run."""
    metrics = source.metrics
    options = []
    for variant in VARIANTS:
        name = variant.replace("+", "_")
        mean, median = metrics.get(f"eval_{name}_dice_mean"), metrics.get(f"eval_{name}_dice_median")
        if mean is not None:
            options.append(f"{variant} {mean:.4f}" + (f" / {median:.4f}" if median is not None else ""))
    if options:
        patients = metrics.get("eval_patients")
        over = f" over {int(patients)} patients" if patients else ""
        text = f"Evaluation per-volume Dice (mean / median{over}): {', '.join(options)}."
    else:
        text = "Evaluation per-volume Dice: not evaluated (run evaluate.json on model.pt, then export again)."
    headline = metrics.get("best_val_volume_dice")
    if headline is not None:
        text += f" Best validation per-volume Dice {headline:.4f}."
    run_name = source.mlflow.get("run_name")
    return text + f" Exported from run {run_id}" + (f" ({run_name})." if run_name else ".")


def version_tags(source: ModelSource, bundle_dir: Path) -> dict[str, str]:
    """The sha256 of the bundle's model files, its version and the run's metrics."""
    meta = json.loads((bundle_dir / "configs" / "metadata.json").read_text())
    tags = {f"sha256.{name}": meta["model_files"][name]["sha256"] for name in MODEL_FILES}
    tags["bundle_version"] = str(meta.get("version", ""))
    tags.update({k: f"{v:.6g}" for k, v in source.metrics.items()})
    return tags


def _run_of(client: Any, source: ModelSource) -> str:
    run_id = source.mlflow.get("run_id")
    if run_id:
        return run_id
    experiment = client.get_experiment_by_name(EXPERIMENT)
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(EXPERIMENT)
    run = client.create_run(experiment_id, run_name=f"export-{time.strftime('%Y%m%d-%H%M%S')}")
    client.set_terminated(run.info.run_id)
    return run.info.run_id


def register_bundle(
    source: ModelSource, bundle_dir: Path, name: str, tracking_uri: str, alias: str | None = None
) -> Any:
    """Log the bundle and its MLflow Model to the run, register a new version of ``name``, and
    move ``alias`` to it; the ``ModelVersion``.

    Raises:
        MlflowException: the store refuses (nothing is retried here: the bundle folder is written).
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    uri = source.mlflow.get("tracking_uri") or tracking_uri
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    run_id = _run_of(client, source)
    client.log_artifacts(run_id, str(bundle_dir), "bundle")
    weights = bundle_dir / "models" / "model.pt"
    logged = log_model(
        client, run_id, weights, source.config, step=best_epoch(client, run_id), tags={"origin": "export"}
    )
    try:
        client.create_registered_model(name, description=DESCRIPTION)
    except MlflowException as error:
        if error.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    # the model's own location as source: a "models:/<id>" source is resolved by a local store
    # through MLflow's global tracking URI, which may name another store
    version = client.create_model_version(
        name,
        source=logged.artifact_location,
        run_id=run_id,
        tags={**version_tags(source, bundle_dir), "logged_model_id": logged.model_id},
        description=version_description(source, run_id),
        model_id=logged.model_id,
    )
    listed = json.loads(client.get_logged_model(logged.model_id).tags.get(MODEL_VERSIONS_TAG, "[]"))
    listed.append({"name": name, "version": str(version.version)})
    client.set_logged_model_tags(logged.model_id, {MODEL_VERSIONS_TAG: json.dumps(listed)})
    if alias:
        client.set_registered_model_alias(name, alias, version.version)
    moved = f", alias {alias!r} moved to it" if alias else ""
    logger.info("Registered %s version %s (run %s%s) at %s", name, version.version, run_id, moved, uri)
    return version
