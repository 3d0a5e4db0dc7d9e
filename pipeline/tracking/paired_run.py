"""`python -m pipeline compare --runs A B --paired`: two evaluated MLflow runs, patient by patient.

Each run's ``evaluation/summary.json`` (logged by ``bundle/configs/evaluate.json``) is downloaded
through ``mlflow.MlflowClient`` (a local SQLite store or a tracking server alike) and compared by
:func:`pipeline.tracking.paired.paired_comparison`. Written: ``--out`` (the paired plot PNG) and
the JSON beside it (same name, ``.json``).

Logged (unless ``--no-log``) as a new MLflow run ``compare <A> vs <B>`` in run A's experiment,
holding the JSON and the PNG under ``comparison/``, the headline numbers as metrics
(``paired_mean_difference``, ``paired_ci_low``, ...) and the settings as parameters, tagged
``pipeline.kind = comparison``, ``compare.run_a`` and ``compare.run_b`` with both run ids. A run of
its own rather than artifacts on A and B: the compared runs stay as training wrote them (a
registered model's run does not change after the fact), a run compared with several others
does not collect a pile of files, and every comparison stays one searchable record
(``tags.`compare.run_a` = '<id>'``). ``python -m pipeline compare`` leaves such runs out of its table.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

from pipeline.atomic import write_json
from pipeline.tracking import paired
from pipeline.tracking.paired import ComparisonRefused
from pipeline.tracking.uris import default_tracking_uri

logger = logging.getLogger(__name__)

DEFAULT_OUT = "outputs/compare_paired.png"
SUMMARY_ARTIFACT = "evaluation/summary.json"
KIND_TAG = "pipeline.kind"
EVALUATE = (
    "python -m monai.bundle run --config_file "
    "\"['bundle/configs/train.json','bundle/configs/evaluate.json']\" "
    "--ckpt_path outputs/runs/{name}/models/model.pt"
)


def _label(run: Any) -> str:
    return f"run {run.info.run_name or '(unnamed)'} ({run.info.run_id})"


def evaluation_summary(client: Any, run: Any, folder: Path) -> dict:
    """The run's ``evaluation/summary.json``, downloaded into ``folder``.

    Raises:
        ComparisonRefused: the run has no evaluation (names the command that makes one).
    """
    run_id = run.info.run_id
    listed = {info.path for info in client.list_artifacts(run_id, "evaluation")}
    if SUMMARY_ARTIFACT not in listed:
        raise ComparisonRefused(
            f"{_label(run)} has no evaluation: no {SUMMARY_ARTIFACT} among its artifacts. Evaluate its "
            f"model, which logs the summary to the run: {EVALUATE.format(name=run.info.run_name or '<run>')}"
        )
    target = folder / run_id
    target.mkdir(parents=True, exist_ok=True)
    path = client.download_artifacts(run_id, SUMMARY_ARTIFACT, str(target))
    try:
        return json.loads(Path(path).read_text())
    except ValueError as error:
        raise ComparisonRefused(f"{SUMMARY_ARTIFACT} of {_label(run)} is not JSON ({error})") from error


def _run_info(run: Any, summary: dict) -> dict:
    return {
        "run_id": run.info.run_id,
        "name": run.info.run_name,
        "experiment_id": run.info.experiment_id,
        "evaluated": summary.get("created"),
        "checkpoint": summary.get("checkpoint"),
        "threshold": summary.get("threshold"),
    }


def paired_runs(
    client: Any,
    run_ids: tuple[str, str],
    option: str = paired.DEFAULT_OPTION,
    metric: str = paired.DEFAULT_METRIC,
    **settings: Any,
) -> tuple[dict, tuple[Any, Any]]:
    """The comparison of two runs' evaluations (``settings``: n_resamples, seed, tie_tolerance)
    with ``run_a`` and ``run_b`` added, and the two MLflow runs."""
    if len(run_ids) != 2:
        raise ComparisonRefused(f"--paired compares two runs: give --runs A B, not {len(run_ids)}")
    if run_ids[0] == run_ids[1]:
        raise ComparisonRefused(f"--runs names run {run_ids[0]} twice: compare it with another run")
    runs = tuple(client.get_run(run_id) for run_id in run_ids)
    with tempfile.TemporaryDirectory(prefix="compare-") as folder:
        summaries = [evaluation_summary(client, run, Path(folder)) for run in runs]
    try:
        comparison = paired.paired_comparison(*summaries, option, metric, ("A", "B"), **settings)
    except ComparisonRefused as error:
        raise ComparisonRefused(f"A = {_label(runs[0])}, B = {_label(runs[1])}: {error}") from None
    comparison["run_a"], comparison["run_b"] = (_run_info(r, s) for r, s in zip(runs, summaries))
    return comparison, runs


def headline(comparison: dict) -> str:
    """One line: the mean difference, its interval and the p-value."""
    boot, test = comparison["bootstrap"], comparison["wilcoxon"]
    p = "n/a" if test["p_value"] is None else f"{test['p_value']:.4g}"
    return (
        f"{comparison['metric']} ({comparison['option']}) B - A = {comparison['mean_difference']:+.4f}, "
        f"95% CI [{boot['low']:+.4f}, {boot['high']:+.4f}], Wilcoxon p = {p}, "
        f"over {comparison['n_paired']} patients"
    )


def format_report(comparison: dict) -> str:
    """The plain-text report of ``compare --paired``."""
    a, b, boot, test = (comparison[k] for k in ("run_a", "run_b", "bootstrap", "wilcoxon"))
    counts = comparison["outcomes"]
    better = "higher" if comparison["higher_is_better"] else "lower"
    lines = [
        f"A  {a['name']}  {a['run_id']}  evaluated {a['evaluated']}",
        f"B  {b['name']}  {b['run_id']}  evaluated {b['evaluated']}",
        f"per-patient {comparison['metric']} of option {comparison['option']} ({better} is better), "
        f"difference B - A, {comparison['n_paired']} of {comparison['n_patients']} patients paired",
        f"mean A {comparison['mean_a']:.4f}  mean B {comparison['mean_b']:.4f}  "
        f"mean difference {comparison['mean_difference']:+.4f}  "
        f"median {comparison['median_difference']:+.4f}",
        f"95% bootstrap CI of the mean difference [{boot['low']:+.4f}, {boot['high']:+.4f}] "
        f"({boot['n_resamples']} resamples of the patients, percentile, seed {boot['seed']})",
        "Wilcoxon signed-rank, two-sided, zero differences dropped: "
        + ("p n/a" if test["p_value"] is None else f"p = {test['p_value']:.4g}")
        + f" ({test['n_nonzero']} non-zero, {test['n_zero']} zero)",
    ]
    if test["note"]:
        lines.append(f"  note: {test['note']}")
    lines.append(
        f"B better {counts['b_better']}, A better {counts['a_better']}, ties {counts['ties']} "
        f"(|B - A| <= {counts['tie_tolerance']:g})"
    )
    lines += ["", f"{'patient':<24} {'A':>9} {'B':>9} {'B - A':>9}  outcome"]
    for row in sorted(comparison["patients"], key=lambda r: r["difference"]):
        free = "" if row["has_lesion"] else "  (lesion-free)"
        lines.append(
            f"{row['patient']:<24} {row['a']:>9.4f} {row['b']:>9.4f} {row['difference']:>+9.4f}  "
            f"{row['outcome']}{free}"
        )
    if comparison["lesion_free"]:
        lines += ["", f"lesion-free patients, not paired ({comparison['metric']} undefined or 0 there):"]
        for row in comparison["lesion_free"]:
            calls = [f"detected in {k}" for k in ("A", "B") if row[f"{k.lower()}_detected"]]
            lines.append(
                f"  {row['patient']}: false-positive voxels A {row['a_fp_voxels']} B {row['b_fp_voxels']}"
                + (f" ({', '.join(calls)})" if calls else "")
            )
    for row in comparison["undefined"]:
        lines.append(
            f"left out, {comparison['metric']} undefined: {row['patient']} (A {row['a']}, B {row['b']})"
        )
    return "\n".join(lines)


def write_files(comparison: dict, out_png: str | Path) -> tuple[Path, Path]:
    """The paired plot at ``out_png`` and the JSON beside it; returns (png, json)."""
    from pipeline.tracking.paired_plot import paired_plot

    names = (f"A: {comparison['run_a']['name']}", f"B: {comparison['run_b']['name']}")
    png = paired_plot(comparison, out_png, names)
    return png, write_json(Path(out_png).with_suffix(".json"), comparison)


def log_comparison(client: Any, runs: tuple[Any, Any], comparison: dict, files: tuple[Path, Path]) -> str:
    """A new run ``compare <A> vs <B>`` in run A's experiment (module docstring); its id."""
    from mlflow.entities import Metric, Param

    a, b = (run.info for run in runs)
    tags = {
        KIND_TAG: "comparison",
        "compare.run_a": a.run_id,
        "compare.run_b": b.run_id,
        "mlflow.note.content": (
            f"Paired comparison of {a.run_name} (A) and {b.run_name} (B): {headline(comparison)}"
        ),
    }
    name = f"compare {a.run_name or a.run_id[:8]} vs {b.run_name or b.run_id[:8]}"
    run_id = client.create_run(a.experiment_id, run_name=name, tags=tags).info.run_id
    boot, counts = comparison["bootstrap"], comparison["outcomes"]
    params = {
        "run_a": a.run_id,
        "run_b": b.run_id,
        "option": comparison["option"],
        "metric": comparison["metric"],
        "n_resamples": boot["n_resamples"],
        "seed": boot["seed"],
        "tie_tolerance": counts["tie_tolerance"],
    }
    values = {
        "mean_a": comparison["mean_a"],
        "mean_b": comparison["mean_b"],
        "mean_difference": comparison["mean_difference"],
        "ci_low": boot["low"],
        "ci_high": boot["high"],
        "wilcoxon_p": comparison["wilcoxon"]["p_value"],
        "n_paired": comparison["n_paired"],
        "b_better": counts["b_better"],
        "a_better": counts["a_better"],
        "ties": counts["ties"],
    }
    stamp = int(time.time() * 1000)
    metrics = [Metric(f"paired_{k}", float(v), stamp, 0) for k, v in values.items() if v is not None]
    client.log_batch(
        run_id,
        metrics=metrics,
        params=[Param(k, str(v)) for k, v in params.items()],
    )
    for path in files:
        client.log_artifact(run_id, str(path), "comparison")
    client.set_terminated(run_id)
    return run_id


def main(args: argparse.Namespace) -> int:
    """The ``--paired`` branch of ``python -m pipeline compare`` (its arguments are in compare)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    client = mlflow.MlflowClient(tracking_uri=default_tracking_uri(args.tracking_uri))
    try:
        comparison, runs = paired_runs(
            client,
            tuple(args.runs),
            args.option,
            args.metric or paired.DEFAULT_METRIC,
            n_resamples=args.resamples,
            seed=args.seed,
            tie_tolerance=args.tie_tolerance,
        )
        files = write_files(comparison, args.out or DEFAULT_OUT)
        print(format_report(comparison))
        print(f"\npaired plot: {files[0]}\ncomparison: {files[1]}")
        if not args.no_log:
            run_id = log_comparison(client, runs, comparison, files)
            experiment = runs[0].info.experiment_id
            print(f"logged to MLflow run {run_id} ({client.tracking_uri}, experiment {experiment})")
    except paired.ComparisonRefused as error:
        logger.error("%s", error)
        return 1
    except MlflowException as error:
        logger.error("%s", str(error).splitlines()[0])
        return 1
    return 0
