"""`python -m pipeline compare`: MLflow runs side by side, best first, and their learning curves.

Runs are read through ``mlflow.MlflowClient``, so the local SQLite store and a team's tracking
server work alike. The table has one row per run: name, start date, the parameters that differ
between the runs (those shared by all are left out), best and final value of the chosen metric
(per-volume Dice by default), best and final per-volume Dice and final slice Dice (each column
once), epochs (logged / planned: the ``epochs`` parameter is shown there, not as a column of its
own), wall time and run id. Rows are sorted by the best value of the chosen metric, best first
(lowest first for a loss); runs that never logged it come last; a metric no run logged is refused,
naming those logged. The learning curves of all runs are overlaid in one PNG
(:func:`pipeline.tracking.curves.learning_curves`). The comparison runs that ``--paired`` logs
(:mod:`pipeline.tracking.paired_run`) are left out of an experiment's listing.
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
DEFAULT_OUT = "outputs/compare_runs.png"
CURVES = ("train_loss", "val_dice", "val_volume_dice")
VALUE_WIDTH = 24
# where a run wrote its split differs with every output folder; dataset_fingerprint and the
# patient counts say whether the data and the split were the same
# epochs (and MONAI's max_epochs) are shown in the epochs column as logged / planned
IGNORED_PARAMS = frozenset({"split_file", "epochs", "max_epochs"})


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

    @property
    def epochs_text(self) -> str:
        """Epochs logged, and planned when the run has the ``epochs`` parameter: ``3/20``."""
        planned = self.params.get("epochs") or self.params.get("max_epochs")
        done = "-" if self.epochs is None else str(self.epochs)
        return f"{done}/{planned}" if planned else done


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
    runs: list[Any] = []
    token = None
    while len(runs) < max_runs:  # the runs `compare --paired` logs hold no training: left out
        page = client.search_runs(
            [found.experiment_id],
            max_results=max_runs,
            order_by=["attributes.start_time DESC"],
            page_token=token,
        )
        runs += [run for run in page if run.data.tags.get("pipeline.kind") != "comparison"]
        token = page.token
        if not token:
            break
    runs = runs[:max_runs]
    if not runs:
        raise LookupError(f"experiment {experiment!r} at {client.tracking_uri} holds no runs")
    return runs


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes // 60}h{minutes % 60:02d}m" if minutes >= 60 else f"{minutes}m{secs:02d}s"


def check_metric(runs: Sequence[Any], metric: str) -> None:
    """Raise LookupError unless at least one of the MLflow ``runs`` logged ``metric``; the message
    names the metrics logged (the evaluation's ``eval_*`` ones counted, system metrics left out)."""
    import difflib

    logged = {key for run in runs for key in run.data.metrics}
    if metric in logged:
        return
    names = sorted(k for k in logged if not k.startswith(("system/", "eval_")))
    evaluation = sorted(k for k in logged if k.startswith("eval_"))
    if evaluation:
        pattern = "eval_<option>_<figure>_<statistic>"
        names.append(f"and {len(evaluation)} {pattern} metrics ({evaluation[0]}, ...)")
    close = difflib.get_close_matches(metric, sorted(logged), n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise LookupError(
        f"no run logged the metric {metric!r} (--metric); the runs logged: {', '.join(names) or 'none'}{hint}"
    )


def format_table(runs: Sequence[RunSummary], metric: str = DEFAULT_METRIC) -> str:
    """A plain-text table, one line per run in the given order; every column name once."""
    params = differing_params(runs)
    columns: dict[str, Any] = {"run": lambda r: r.name, "started": lambda r: r.started}
    for name in params:
        columns.setdefault(name, lambda r, name=name: str(r.params.get(name, "-"))[:VALUE_WIDTH])
    columns.setdefault(f"best {metric}", lambda r: _number(r.best))
    columns.setdefault(f"final {metric}", lambda r: _number(r.final))
    for key in ("best_val_volume_dice", "final_val_volume_dice", "final_val_dice"):
        columns.setdefault(key.replace("_", " ", 1), lambda r, key=key: _number(r.metrics[key]))
    columns.setdefault("epochs", lambda r: r.epochs_text)
    columns.setdefault("wall time", lambda r: _duration(r.wall_seconds))
    columns.setdefault("run id", lambda r: r.run_id)
    header = list(columns)
    rows = [[cell(run) for cell in columns.values()] for run in runs]
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
    check_metric(runs, metric)
    summaries = sort_runs([summarize_run(client, run, metric) for run in runs], metric)
    png = None
    if out_png is not None:
        plotted = list(CURVES) + ([metric] if metric not in CURVES else [])
        histories = curves.mlflow_histories(client, [s.run_id for s in summaries], plotted)
        png = curves.learning_curves(histories, out_png, plotted)
    return summaries, png


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from pipeline.tracking import paired

    parser.add_argument(
        "--experiment", default=DEFAULT_EXPERIMENT, help="MLflow experiment (default %(default)s)"
    )
    parser.add_argument("--runs", nargs="+", default=(), metavar="ID", help="compare these run ids only")
    parser.add_argument(
        "--metric",
        help=f"table: sort by the best value of this MLflow metric (default {DEFAULT_METRIC}); --paired: "
        f"the per-patient metric of summary.json (default {paired.DEFAULT_METRIC})",
    )
    parser.add_argument(
        "--tracking-uri",
        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or sqlite:///outputs/mlflow.db)",
    )
    parser.add_argument(
        "--out",
        help=f"the PNG: learning curves (default {DEFAULT_OUT}), or with --paired the paired plot, "
        f"its JSON beside it (default outputs/compare_paired.png)",
    )
    parser.add_argument(
        "--max-runs", type=int, default=50, help="latest runs of the experiment (default %(default)s)"
    )
    group = parser.add_argument_group("paired comparison of two evaluated runs (--runs A B --paired)")
    group.add_argument("--paired", action="store_true", help="compare the per-patient evaluation of two runs")
    group.add_argument(
        "--option",
        default=paired.DEFAULT_OPTION,
        help="post-processing option of the evaluation: threshold, threshold+lcc, threshold+mcs, tta, "
        "tta+lcc, tta+mcs (default %(default)s)",
    )
    group.add_argument(
        "--resamples", type=int, default=paired.N_RESAMPLES, help="bootstrap resamples (default %(default)s)"
    )
    group.add_argument("--seed", type=int, default=paired.SEED, help="bootstrap seed (default %(default)s)")
    group.add_argument(
        "--tie-tolerance",
        type=float,
        default=paired.TIE_TOLERANCE,
        help="|B - A| at most this is a tie (default %(default)s)",
    )
    group.add_argument("--no-log", action="store_true", help="do not log the comparison to MLflow as a run")


def main(args: argparse.Namespace) -> int:
    from mlflow.exceptions import MlflowException

    if args.paired:
        from pipeline.tracking import paired_run

        return paired_run.main(args)
    metric = args.metric or DEFAULT_METRIC
    try:
        summaries, png = compare_runs(
            args.tracking_uri, args.experiment, args.runs, metric, args.out or DEFAULT_OUT, args.max_runs
        )
    except (LookupError, MlflowException) as error:
        logger.error("%s", str(error).splitlines()[0])
        return 1
    print(format_table(summaries, metric))
    print(f"\nlearning curves: {png}")
    return 0
