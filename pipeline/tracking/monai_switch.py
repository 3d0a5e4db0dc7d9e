"""MONAI's ``--tracking mlflow`` switch: refused, since this bundle tracks every run already."""

from __future__ import annotations

import os

from ignite.engine import Engine, Events

TRACKING_ALREADY_ON = (
    "--tracking mlflow adds MONAI's MLFlowHandler, but this bundle logs every run to MLflow already "
    "(on by default: {uri}). Drop --tracking mlflow; to log elsewhere pass --tracking_uri URI "
    "(e.g. http://127.0.0.1:5000) or set MLFLOW_TRACKING_URI, and --experiment_name NAME."
)


def refuse_second_tracker(engine: Engine, ours: object = None) -> None:
    """Refuse, before the first iteration, an MLflow handler other than ``ours`` (MONAI's ``--tracking``).

    MONAI's MLFlowHandler would log the trainer's output as the loss and crash on the first
    iteration (the bundle's trainer returns a dict, not MONAI's decollated list); both would also
    open MLflow runs of their own.
    """
    from monai.handlers import MLFlowHandler

    for handler, *_ in engine._event_handlers.get(Events.STARTED, []):
        owner = getattr(handler, "__self__", None)
        if isinstance(owner, MLFlowHandler) and owner is not ours:
            uri = os.environ.get("MLFLOW_TRACKING_URI") or "the tracking_uri of train.json"
            raise ValueError(TRACKING_ALREADY_ON.format(uri=uri))
