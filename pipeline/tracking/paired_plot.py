"""The paired plot of ``compare --paired``: one line per patient from run A to run B.

Left panel: the paired patients' metric in A (x = 0) and B (x = 1), a line each, green where B is
better, red where A is better, grey for a tie; lesion-free patients (paired for the metrics defined
on them, e.g. ``fp_aware_dice``) dashed with hollow markers; the mean as a thick black line.
Right panel, only when lesion-free patients were left out of the pairing (``dice``, ``iou``,
``hd95``): their false-positive voxels in A and B (symmetric-log axis), a filled marker where the
run detected the patient (a false call), hollow where it did not. Every patient's line carries the
patient id as its matplotlib ``gid``, the mean line ``"mean"``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from pipeline.atomic import write_atomically

COLOURS = {"B better": "tab:green", "A better": "tab:red", "tie": "0.55"}


def paired_figure(comparison: Mapping[str, Any], names: tuple[str, str] = ("A", "B")) -> Figure:
    """The figure of a :func:`pipeline.tracking.paired.paired_comparison` result.

    Args:
        comparison: the result (its ``patients``, ``lesion_free``, ``metric``, ``option``, ...).
        names: the x tick labels of run A and run B. Default ("A", "B").
    """
    apart = comparison["lesion_free"]
    fig = Figure(figsize=(8.5 if apart else 5.0, 4.5), layout="constrained")
    axes = fig.subplots(1, 2 if apart else 1, squeeze=False)[0]
    ax = axes[0]
    for row in comparison["patients"]:
        free = not row["has_lesion"]
        ax.plot(
            [0, 1],
            [row["a"], row["b"]],
            color=COLOURS[row["outcome"]],
            linestyle="--" if free else "-",
            marker="o",
            markersize=4,
            markerfacecolor="none" if free else COLOURS[row["outcome"]],
            linewidth=1,
            alpha=0.8,
            gid=row["patient"],
        )
    ax.plot(
        [0, 1],
        [comparison["mean_a"], comparison["mean_b"]],
        color="black",
        linewidth=3,
        marker="D",
        gid="mean",
    )
    better = "higher" if comparison["higher_is_better"] else "lower"
    ax.set_title(
        f"{comparison['metric']} ({comparison['option']}), {comparison['n_paired']} patients paired",
        fontsize=10,
    )
    ax.set_ylabel(f"{comparison['metric']} ({better} is better)")
    handles = [Line2D([], [], color=c, label=k) for k, c in COLOURS.items()]
    handles.append(Line2D([], [], color="black", linewidth=3, label="mean"))
    if any(not r["has_lesion"] for r in comparison["patients"]):
        free = Line2D([], [], color="0.3", linestyle="--", marker="o", mfc="none", label="lesion-free")
        handles.append(free)
    ax.legend(handles=handles, fontsize=8, loc="best")
    if apart:
        free_ax = axes[1]
        for row in apart:
            values = [row["a_fp_voxels"] or 0, row["b_fp_voxels"] or 0]
            free_ax.plot([0, 1], values, color="tab:purple", linewidth=1, gid=row["patient"])
            for x, value, detected in zip((0, 1), values, (row["a_detected"], row["b_detected"])):
                free_ax.plot(
                    x, value, marker="s", color="tab:purple", mfc="tab:purple" if detected else "none"
                )
        free_ax.set_yscale("symlog", linthresh=1)
        free_ax.set_title(f"{len(apart)} lesion-free patients, not paired", fontsize=10)
        free_ax.set_ylabel("false-positive voxels (filled: detected)")
    boot, p = comparison["bootstrap"], comparison["wilcoxon"]["p_value"]
    fig.suptitle(
        f"B - A: mean {comparison['mean_difference']:+.4f}, "
        f"95% CI [{boot['low']:+.4f}, {boot['high']:+.4f}], "
        f"Wilcoxon p {'n/a' if p is None else format(p, '.3g')}",
        fontsize=10,
    )
    for axis in axes:
        axis.set_xticks([0, 1], list(names))
        axis.set_xlim(-0.25, 1.25)
        axis.grid(axis="y", alpha=0.3)
    return fig


def paired_plot(
    comparison: Mapping[str, Any], out_path: str | Path, names: tuple[str, str] = ("A", "B"), dpi: int = 100
) -> Path:
    """:func:`paired_figure` written as a PNG (atomically, its folder created); returns the path."""
    fig = paired_figure(comparison, names)
    return write_atomically(out_path, lambda tmp: fig.savefig(tmp, format="png", dpi=dpi))
