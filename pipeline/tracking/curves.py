"""Learning curves of MLflow runs: read the metric histories, draw one PNG.

The figure is drawn on its own ``matplotlib.figure.Figure`` (never pyplot's global state) and
written atomically; a figure of ``figsize`` inches saved at ``dpi`` is ``figsize * dpi`` pixels.
The x axis is what the MLflow step of the metric counts (:func:`x_label`): the epoch for the
per-epoch metrics (``train_loss``, ``val_*``), the iteration for ``train_loss_iter`` and ``lr``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from pipeline.atomic import write_atomically

DEFAULT_METRICS = ("train_loss", "val_dice", "val_volume_dice")

History = dict[str, dict[str, list[tuple[int, float]]]]


def x_label(metric: str) -> str:
    """What the MLflow step of ``metric`` counts, as training logs it: "iteration" for
    ``train_loss_iter``, ``lr`` and ``lr_group_<n>`` (any ``*_iter``), "epoch" otherwise."""
    per_iteration = metric.endswith("_iter") or metric == "lr" or metric.startswith("lr_group_")
    return "iteration" if per_iteration else "epoch"


def learning_curves(
    histories: Mapping[str, Mapping[str, Sequence[tuple[int, float]]]],
    out_path: str | Path,
    metrics: Sequence[str] = DEFAULT_METRICS,
    dpi: int = 100,
) -> Path:
    """:func:`learning_curves_figure` written as a PNG: one subplot per metric, one line per run.

    Args:
        histories: run label -> metric name -> list of (step, value), e.g. from ``mlflow_histories``.
            A metric a run did not log is skipped for that run; a metric no run logged gets an empty
            subplot that says so.
        out_path: PNG file to write (its folder is created).
        metrics: metric names, one subplot each, in this order.
            Default ("train_loss", "val_dice", "val_volume_dice").
        dpi: resolution; the picture is ``4.5 * len(metrics) * dpi`` by ``3.5 * dpi`` pixels. Default 100.

    Returns:
        ``out_path`` as a Path.

    Raises:
        ValueError: no runs or no metrics.
    """
    fig = learning_curves_figure(histories, metrics)
    return write_atomically(out_path, lambda tmp: fig.savefig(tmp, format="png", dpi=dpi))


def learning_curves_figure(
    histories: Mapping[str, Mapping[str, Sequence[tuple[int, float]]]],
    metrics: Sequence[str] = DEFAULT_METRICS,
) -> Figure:
    """The figure of :func:`learning_curves`: value against epoch (or iteration, :func:`x_label`)."""
    if len(histories) == 0:
        raise ValueError("histories is empty: give at least one run")
    if len(metrics) == 0:
        raise ValueError("metrics is empty: name at least one metric to plot")
    fig = Figure(figsize=(4.5 * len(metrics), 3.5), layout="constrained")
    for ax, metric in zip(np.atleast_1d(fig.subplots(1, len(metrics))), metrics):
        ax.set_title(metric, fontsize=10)
        ax.set_xlabel(x_label(metric))
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        for label, run in histories.items():
            points = sorted(run.get(metric) or [])
            if points:
                steps, values = zip(*points)
                ax.plot(steps, values, marker="o", markersize=3, label=label)
        if ax.lines:
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes)
    return fig


def mlflow_histories(
    client: Any, run_ids: Sequence[str], metrics: Sequence[str] = DEFAULT_METRICS
) -> History:
    """Metric histories of MLflow runs, in the shape ``learning_curves`` takes.

    Args:
        client: an ``mlflow.MlflowClient`` (or anything with ``get_run`` and ``get_metric_history``).
        run_ids: MLflow run ids.
        metrics: metric keys to read. Default ("train_loss", "val_dice", "val_volume_dice").

    Returns:
        run label -> metric -> list of (step, value) sorted by step (then time). A run is labelled by
        its run name, or its id when it has none; runs sharing a name get their id's first 8
        characters appended. Metrics a run never logged are absent from its dict.
    """
    runs = [(run_id, client.get_run(run_id).info.run_name or run_id) for run_id in run_ids]
    names = [name for _, name in runs]
    result: History = {}
    for run_id, name in runs:
        label = f"{name} ({run_id[:8]})" if names.count(name) > 1 else name
        result[label] = {}
        for metric in metrics:
            history = sorted(client.get_metric_history(run_id, metric), key=lambda m: (m.step, m.timestamp))
            if history:
                result[label][metric] = [(int(m.step), float(m.value)) for m in history]
    return result
