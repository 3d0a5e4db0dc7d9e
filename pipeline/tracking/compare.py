"""`python -m pipeline compare`: MLflow runs side by side, best first, and their learning curves.

Runs are read through ``mlflow.MlflowClient``, so the local SQLite store and a team's tracking
server work alike. The table has one row per run: name, start date, the parameters that differ
between the runs (those shared by all are left out), best and final value of the chosen metric
(per-volume Dice by default), best and final per-volume Dice, final slice Dice, epochs and wall
time. Rows are sorted by the best value of the chosen metric, best first (lowest first for a loss);
runs that never logged it come last. The learning curves of all runs are overlaid in one PNG
(:func:`pipeline.tracking.curves.learning_curves`).
"""

from __future__ import annotations

import argparse
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.tracking.uris import default_tracking_uri

logger = logging.getLogger(__name__)

DEFAULT_EXPERIMENT = "lgg-segmentation"
DEFAULT_METRIC = "val_volume_dice"
CURVES = ("train_loss", "val_dice", "val_volume_dice")
VALUE_WIDTH = 24
# where a run wrote its split differs with every output folder; dataset_fingerprint and the
# patient counts say whether the data and the split were the same
IGNORED_PARAMS = frozenset({"split_file"})


@dataclass
class RunSummary:
    """One row of the comparison."""

    run_id: str
    name: str
    started: str
    status: str
    params: dict[str, str]
    best: float | None
    final: float | None
    metrics: dict[str, float | None] = field(default_factory=dict)
    epochs: int | None = None
    wall_seconds: float | None = None


def lower_is_better(metric: str) -> bool:
    """Losses (any metric named ``*loss*`` or ``*bce*``) are minimised; everything else maximised."""
    return "loss" in metric or "bce" in metric


def _history(client: Any, run_id: str, metric: str) -> list[float]:
    points = sorted(client.get_metric_history(run_id, metric), key=lambda m: (m.step, m.timestamp))
    return [float(m.value) for m in points if not math.isnan(m.value)]


def summarize_run(client: Any, run: Any, metric: str = DEFAULT_METRIC) -> RunSummary:
    """Best and final values of ``metric`` and the headline metrics of one MLflow run."""
    run_id = run.info.run_id
    pick = min if lower_is_better(metric) else max
    values = _history(client, run_id, metric)
    volume = _history(client, run_id, "val_volume_dice")
    slice_dice = _history(client, run_id, "val_dice")
    epochs = [int(m.step) for m in client.get_metric_history(run_id, "train_loss")]
    end = run.info.end_time or (int(time.time() * 1000) if run.info.status == "RUNNING" else None)
    return RunSummary(
        run_id=run_id,
        name=run.info.run_name or run_id[:8],
        started=time.strftime("%Y-%m-%d %H:%M", time.localtime(run.info.start_time / 1000)),
        status=run.info.status,
        params=dict(run.data.params),
        best=pick(values) if values else None,
        final=values[-1] if values else None,
        metrics={
            "best_val_volume_dice": max(volume) if volume else None,
            "final_val_volume_dice": volume[-1] if volume else None,
            "final_val_dice": slice_dice[-1] if slice_dice else None,
        },
        epochs=max(epochs) if epochs else None,
        wall_seconds=(end - run.info.start_time) / 1000 if end else None,
    )


def differing_params(runs: Sequence[RunSummary]) -> list[str]:
    """Parameter names whose value is not the same in every run (a missing one counts as different).

    ``IGNORED_PARAMS`` (the split file's path) are left out.
    """
    names = sorted({name for run in runs for name in run.params} - IGNORED_PARAMS)
    return [n for n in names if len({run.params.get(n) for run in runs}) > 1]


def sort_runs(runs: Sequence[RunSummary], metric: str = DEFAULT_METRIC) -> list[RunSummary]:
    """Best first by the best value of ``metric``; runs without it last, then by start date."""
    sign = 1.0 if lower_is_better(metric) else -1.0
    return sorted(runs, key=lambda r: (r.best is None, sign * (r.best or 0.0), r.started))


def find_runs(
    client: Any, experiment: str = DEFAULT_EXPERIMENT, run_ids: Sequence[str] = (), max_runs: int = 50
) -> list[Any]:
    """The named runs, or the latest ``max_runs`` of the experiment.

    Raises:
        LookupError: the experiment does not exist or holds no runs.
    """
    if run_ids:
        return [client.get_run(run_id) for run_id in run_ids]
    found = client.get_experiment_by_name(experiment)
    if found is None:
        names = sorted(e.name for e in client.search_experiments())
        raise LookupError(
            f"no MLflow experiment {experiment!r} at {client.tracking_uri}; experiments: {names}"
        )
    runs = client.search_runs(
        [found.experiment_id], max_results=max_runs, order_by=["attributes.start_time DESC"]
    )
    if not runs:
        raise LookupError(f"experiment {experiment!r} at {client.tracking_uri} holds no runs")
    return list(runs)


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes // 60}h{minutes % 60:02d}m" if minutes >= 60 else f"{minutes}m{secs:02d}s"


def format_table(runs: Sequence[RunSummary], metric: str = DEFAULT_METRIC) -> str:
    """A plain-text table, one line per run in the given order."""
    params = differing_params(runs)
    header = ["run", "started", *params, f"best {metric}", f"final {metric}"]
    if metric != "val_volume_dice":
        header += ["best val_volume_dice", "final val_volume_dice"]
    header += ["final val_dice", "epochs", "wall time", "run id"]
    rows = []
    for run in runs:
        row = [run.name, run.started, *(str(run.params.get(p, "-"))[:VALUE_WIDTH] for p in params)]
        row += [_number(run.best), _number(run.final)]
        if metric != "val_volume_dice":
            row += [
                _number(run.metrics["best_val_volume_dice"]),
                _number(run.metrics["final_val_volume_dice"]),
            ]
        row += [_number(run.metrics["final_val_dice"]), str(run.epochs or "-"), _duration(run.wall_seconds)]
        rows.append(row + [run.run_id])
    widths = [max(len(line[i]) for line in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip() for line in [header, *rows]
    ]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def compare_runs(
    tracking_uri: str | None = None,
    experiment: str = DEFAULT_EXPERIMENT,
    run_ids: Sequence[str] = (),
    metric: str = DEFAULT_METRIC,
    out_png: str | Path | None = None,
    max_runs: int = 50,
) -> tuple[list[RunSummary], Path | None]:
    """Summaries of the runs sorted best first, and the PNG of their learning curves (when ``out_png``)."""
    import mlflow

    from pipeline.tracking import curves

    client = mlflow.MlflowClient(tracking_uri=default_tracking_uri(tracking_uri))
    runs = find_runs(client, experiment, run_ids, max_runs)
    summaries = sort_runs([summarize_run(client, run, metric) for run in runs], metric)
    png = None
    if out_png is not None:
        plotted = list(CURVES) + ([metric] if metric not in CURVES else [])
        histories = curves.mlflow_histories(client, [s.run_id for s in summaries], plotted)
        png = curves.learning_curves(histories, out_png, plotted)
    return summaries, png


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--experiment", default=DEFAULT_EXPERIMENT, help="MLflow experiment (default %(default)s)"
    )
    parser.add_argument("--runs", nargs="+", default=(), metavar="ID", help="compare these run ids only")
    parser.add_argument(
        "--metric", default=DEFAULT_METRIC, help="sort by the best value of it (default %(default)s)"
    )
    parser.add_argument(
        "--tracking-uri",
        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or sqlite:///outputs/mlflow.db)",
    )
    parser.add_argument(
        "--out", default="outputs/compare_runs.png", help="learning curves PNG (default %(default)s)"
    )
    parser.add_argument(
        "--max-runs", type=int, default=50, help="latest runs of the experiment (default %(default)s)"
    )


def main(args: argparse.Namespace) -> int:
    from mlflow.exceptions import MlflowException

    try:
        summaries, png = compare_runs(
            args.tracking_uri, args.experiment, args.runs, args.metric, args.out, args.max_runs
        )
    except (LookupError, MlflowException) as error:
        logger.error("%s", str(error).splitlines()[0])
        return 1
    print(format_table(summaries, args.metric))
    print(f"\nlearning curves: {png}")
    return 0
