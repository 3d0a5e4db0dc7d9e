"""Where ``python -m pipeline export --crossval`` takes its fold models from: the local fold runs of a
cross-validation, or the fold runs nested under its parent MLflow run.

The exported bundle is one model, the fold ensemble (:mod:`pipeline.inference.ensemble`), so its
folds must be of one recipe: the same network settings and image size (refused otherwise, naming
the folds). What the bundle records of them (metadata.json ``crossval``): the cross-validation's
name, the parent MLflow run, and per fold its run, MLflow run id and the sha256 of its
``model.pt``. Its metrics are the pooled out-of-fold evaluation (``<output_root>/crossval/<name>/
summary.json``): the single fold models' Dice on the patients they did not see, the estimate the
cross-validation gives; the ensemble's own Dice needs held-out data (see
:mod:`pipeline.inference.ensemble_gain`). The post-processing defaults are chosen from them.
"""

from __future__ import annotations

import copy
import json
import logging
import re
from pathlib import Path
from typing import Any

from pipeline.export.layout import sha256
from pipeline.export.sources import ModelSource, summary_file_metrics
from pipeline.inference.fold_models import crossval_folds
from pipeline.tracking.logged_model import network_settings

logger = logging.getLogger(__name__)

RUN_ID = re.compile(r"[0-9a-f]{32}")
PARENT_TAG = "mlflow.parentRunId"
ENSEMBLE = "pipeline.inference.ensemble.FoldEnsemble"


def _member(fold: int, checkpoint: Path, config: dict, run: str, run_id: str | None) -> dict[str, Any]:
    return {
        "fold": fold,
        "checkpoint": checkpoint,
        "config": config,
        "run": run,
        "run_id": run_id,
        "sha256": sha256(checkpoint),
    }


def check_one_recipe(members: list[dict]) -> None:
    """Refuse folds whose network settings or image size differ (the bundle builds k equal networks).

    Raises:
        ValueError: naming the first fold that differs from fold 0 and what differs.
    """
    from monai.bundle import ConfigParser

    def recipe(config: dict) -> tuple[dict, int]:
        size = ConfigParser(copy.deepcopy(config)).get_parsed_content("image_size")
        return network_settings(copy.deepcopy(config)), int(size)

    first = recipe(members[0]["config"])
    for member in members[1:]:
        other = recipe(member["config"])
        if other != first:
            raise ValueError(
                f"fold {member['fold']} ({member['run']}) was trained with network {other[0]} at "
                f"{other[1]} px, fold {members[0]['fold']} with {first[0]} at {first[1]} px: an exported "
                "ensemble holds folds of one recipe; export the folds of one cross-validation"
            )


def _parent_of(members: list[dict], tracking_uri: str | None) -> dict[str, str]:
    """The parent MLflow run of the fold runs, from the first fold run's tags; {} when unknown."""
    run_id = next((m["run_id"] for m in members if m["run_id"]), None)
    if run_id is None:
        return {}
    try:
        import mlflow

        run = mlflow.MlflowClient(tracking_uri=tracking_uri).get_run(run_id)
        parent = run.data.tags.get(PARENT_TAG)
    except Exception as error:  # the bundle is still useful without MLflow
        logger.warning("MLflow run %s not readable at %s (%s)", run_id, tracking_uri, error)
        return {}
    return {"run_id": parent, "tracking_uri": str(tracking_uri)} if parent else {}


def source_from_crossval_folder(crossval: str | Path, tracking_uri: str | None = None) -> ModelSource:
    """The fold runs of the cross-validation folder (or fold run folder) ``crossval``.

    Raises:
        ValueError, FileNotFoundError: see :func:`pipeline.inference.fold_models.crossval_folds`,
            and :func:`check_one_recipe`.
    """
    folds = crossval_folds(crossval)
    members = []
    for i, checkpoint in enumerate(folds.checkpoints):
        run = folds.run_dir(i)
        record_file = run / "mlflow_run.json"
        record = json.loads(record_file.read_text()) if record_file.is_file() else {}
        tracking_uri = tracking_uri or record.get("tracking_uri")
        config = json.loads((run / "config.json").read_text())
        members.append(_member(i, checkpoint, config, run.name, record.get("run_id")))
    check_one_recipe(members)
    return ModelSource(
        checkpoint=members[0]["checkpoint"],
        config=members[0]["config"],
        metrics=summary_file_metrics(folds.folder / "summary.json"),
        mlflow=_parent_of(members, tracking_uri),
        members=members,
        crossval={"name": folds.name, "folder": str(folds.folder), "folds": len(members)},
    )


def source_from_parent_run(parent_id: str, tracking_uri: str, workdir: Path) -> ModelSource:
    """The fold runs nested under the cross-validation's parent MLflow run ``parent_id``: each
    one's ``models/model.pt`` and ``config.json`` artifacts, ordered by their ``fold`` tag.

    Raises:
        FileNotFoundError: the parent has no fold runs, a fold is missing (naming it), or a fold
            run lacks its artifacts.
    """
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    try:
        parent = client.get_run(parent_id)
    except Exception as error:
        raise FileNotFoundError(f"MLflow run {parent_id} not found at {tracking_uri} ({error})") from error
    name = parent.data.tags.get("crossval") or parent.info.run_name
    children = client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.`{PARENT_TAG}` = '{parent_id}'", max_results=1000
    )
    by_fold = {int(c.data.tags["fold"]): c for c in children if str(c.data.tags.get("fold", "")).isdigit()}
    if not by_fold:
        raise FileNotFoundError(
            f"MLflow run {parent_id} ({name}) has no fold runs nested under it: pass the parent run of a "
            "cross-validation (tag crossval_role=parent), or the cross-validation folder"
        )
    counts = {int(c.data.tags["folds"]) for c in children if str(c.data.tags.get("folds", "")).isdigit()}
    folds = max(counts | {max(by_fold) + 1})
    members = []
    for i in range(folds):
        if i not in by_fold:
            raise FileNotFoundError(
                f"fold {i} of the cross-validation {name} has no run under MLflow run {parent_id}: train it "
                f"with python -m pipeline crossval --fold {i} --crossval_name {name}"
            )
        child = by_fold[i]
        files = {}
        for artifact in ("models/model.pt", "config.json"):
            try:
                folder = workdir / f"fold{i}"
                files[artifact] = Path(client.download_artifacts(child.info.run_id, artifact, str(folder)))
            except Exception as error:
                raise FileNotFoundError(
                    f"fold {i}'s MLflow run {child.info.run_id} has no artifact {artifact} ({error}); a fold "
                    "run logs it when its training completes: finish the fold, or export the local folder"
                ) from error
        config = json.loads(files["config.json"].read_text())
        members.append(_member(i, files["models/model.pt"], config, child.info.run_name, child.info.run_id))
    check_one_recipe(members)
    metrics = {k: float(v) for k, v in parent.data.metrics.items() if k.startswith("eval_")}
    return ModelSource(
        checkpoint=members[0]["checkpoint"],
        config=members[0]["config"],
        metrics=metrics,
        mlflow={"run_id": parent_id, "run_name": parent.info.run_name or "", "tracking_uri": tracking_uri},
        members=members,
        crossval={"name": name, "folds": folds},
    )


def source_from_crossval(crossval: str, tracking_uri: str | None, workdir: Path) -> ModelSource:
    """``--crossval``: a folder when it exists (or names a cross-validation folder), else an MLflow
    parent run id.

    Args:
        tracking_uri: ``--tracking-uri``. Default for a folder: the fold runs' own; for a run id:
            :func:`pipeline.tracking.uris.default_tracking_uri`.

    Raises:
        ValueError: neither a folder nor a run id.
    """
    from pipeline.tracking.uris import default_tracking_uri

    path = Path(crossval).expanduser()
    if path.exists() or path.parent.name in ("crossval", "runs"):
        return source_from_crossval_folder(path, tracking_uri)
    if RUN_ID.fullmatch(crossval):
        return source_from_parent_run(crossval, default_tracking_uri(tracking_uri), workdir)
    raise ValueError(
        f"--crossval {crossval}: not a folder and not an MLflow run id; pass the cross-validation folder "
        "(outputs/crossval/<name>) or the id of its parent MLflow run"
    )


def crossval_record(source: ModelSource) -> dict[str, Any]:
    """metadata.json's ``crossval``: what the exported ensemble is made of (module docstring)."""
    members = [
        {"fold": m["fold"], "run": m["run"], "run_id": m["run_id"], "model_pt_sha256": m["sha256"]}
        for m in source.members
    ]
    return {
        **{k: v for k, v in source.crossval.items() if k != "folder"},
        "parent_run_id": source.mlflow.get("run_id"),
        "combination": "logit of the mean of the folds' sigmoid probabilities, clamped to [1e-6, 1 - 1e-6]",
        "weights": "models/model.pt holds every fold's weights, fold i under members.<i>.",
        "metrics": "eval_metrics: the pooled out-of-fold Dice of the single fold models, not the ensemble's",
        "members": members,
    }


def ensemble_card(meta: dict) -> str:
    """The model card's section on a fold ensemble ("" for a single model)."""
    record = meta.get("crossval")
    if not record:
        return ""
    runs = ", ".join(m["run"] for m in record["members"])
    return (
        "\n## A fold ensemble\n"
        f"- The {len(record['members'])} fold models of the cross-validation `{record.get('name')}` "
        f"({runs}): each pixel's probability is the mean of theirs. `models/model.pt` holds the folds' "
        "weights (fold i under `members.<i>.`); `model.ts` and `model.onnx` are the whole ensemble.\n"
        "- The metrics above are the pooled out-of-fold Dice of the single fold models, each on the "
        "patients it did not see; the ensemble saw every patient of the cross-validation, so its own "
        "Dice needs held-out data.\n"
    )
