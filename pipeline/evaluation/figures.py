"""Figures of an evaluation, written as PNG files: prediction grid, per-patient Dice.

Each plotting function draws on its own ``matplotlib.figure.Figure`` (never pyplot's global state, so it
works headless and in threads), writes the PNG atomically (a temporary file in the same folder, then
``os.replace``: a reader never sees half a picture) and returns the path. A figure of ``figsize`` inches
saved at ``dpi`` is exactly ``figsize * dpi`` pixels (no tight bounding box).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from skimage.segmentation import find_boundaries

from pipeline.atomic import write_atomically

FLAIR_CHANNEL = 1
PANEL_INCHES = 2.5
GRID_COLUMNS = ("FLAIR", "True mask", "Predicted mask", "Overlay")
TRUE_COLOUR = (0.0, 1.0, 0.0)
PRED_COLOUR = (1.0, 0.0, 0.0)
BOTH_COLOUR = (1.0, 1.0, 0.0)


def _save_atomically(fig: Figure, out_path: str | Path, dpi: int) -> Path:
    return write_atomically(out_path, lambda tmp: fig.savefig(tmp, format="png", dpi=dpi))


def _binary_mask(mask: Any, name: str) -> np.ndarray:
    """(H,W) boolean mask from an (H,W) or (1,H,W) array; values above 0.5 are lesion."""
    arr = np.asarray(mask)
    if arr.ndim == 3 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 2:
        raise ValueError(f"{name} must have shape (H, W) or (1, H, W), got {arr.shape}")
    return arr > 0.5


def overlay_rgb(image_flair: np.ndarray, label: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """The FLAIR slice in gray with the outlines of the true and the predicted mask drawn on it.

    An outline pixel is a lesion pixel with a background pixel among its 4 neighbours
    (``find_boundaries(mode="inner")``), so the outline lies on the mask itself.

    Args:
        image_flair: (H, W) FLAIR intensities in [0, 1] (values outside are clipped).
        label: true mask, (H, W) or (1, H, W); values above 0.5 are lesion.
        pred: predicted mask, same shape and convention as ``label``.

    Returns:
        float array (H, W, 3) in [0, 1]: the gray image everywhere except on outline pixels, which are
        green (true outline only), red (predicted outline only) or yellow (both).
    """
    flair = np.asarray(image_flair, dtype=float)
    if flair.ndim != 2:
        raise ValueError(f"image_flair must have shape (H, W), got {flair.shape}")
    true_mask, pred_mask = _binary_mask(label, "label"), _binary_mask(pred, "pred")
    for name, mask in (("label", true_mask), ("pred", pred_mask)):
        if mask.shape != flair.shape:
            raise ValueError(f"{name} must match image_flair's shape {flair.shape}, got {mask.shape}")
    rgb = np.repeat(np.clip(flair, 0.0, 1.0)[..., None], 3, axis=-1)
    true_edge = find_boundaries(true_mask, mode="inner")
    pred_edge = find_boundaries(pred_mask, mode="inner")
    rgb[true_edge & ~pred_edge] = TRUE_COLOUR
    rgb[pred_edge & ~true_edge] = PRED_COLOUR
    rgb[true_edge & pred_edge] = BOTH_COLOUR
    return rgb


def prediction_grid(
    samples: Sequence[Mapping[str, Any]], out_path: str | Path, max_rows: int = 8, dpi: int = 100
) -> Path:
    """One row per slice: FLAIR, true mask, predicted mask, and the overlay of both outlines.

    Args:
        samples: dicts with ``"image"`` (3, H, W) floats in [0, 1] (channel 1 is FLAIR), ``"label"`` and
            ``"pred"`` binary masks (H, W) or (1, H, W), and ``"title"`` (e.g. patient, slice and Dice).
        out_path: PNG file to write (its folder is created).
        max_rows: at most this many samples are drawn, the first ones. Default 8.
        dpi: resolution; the picture is ``4 * PANEL_INCHES * dpi`` pixels wide and
            ``rows * PANEL_INCHES * dpi`` high. Default 100.

    Returns:
        ``out_path`` as a Path.

    Raises:
        ValueError: no samples, ``max_rows`` below 1, or an array of the wrong shape.
    """
    if max_rows < 1:
        raise ValueError(f"max_rows must be at least 1, not {max_rows}")
    if len(samples) == 0:
        raise ValueError("samples is empty: give at least one slice to draw")
    rows = samples[:max_rows]
    width, height = len(GRID_COLUMNS) * PANEL_INCHES, len(rows) * PANEL_INCHES
    fig = Figure(figsize=(width, height), layout="constrained")
    for row, (subfig, sample) in enumerate(zip(np.atleast_1d(fig.subfigures(len(rows), 1)), rows)):
        image = np.asarray(sample["image"], dtype=float)
        if image.ndim != 3 or image.shape[0] != 3:
            raise ValueError(f"samples[{row}]['image'] must have shape (3, H, W), got {image.shape}")
        flair = image[FLAIR_CHANNEL]
        panels = (
            (flair, "gray"),
            (_binary_mask(sample["label"], f"samples[{row}]['label']"), "gray"),
            (_binary_mask(sample["pred"], f"samples[{row}]['pred']"), "gray"),
            (overlay_rgb(flair, sample["label"], sample["pred"]), None),
        )
        subfig.suptitle(str(sample.get("title", "")), fontsize=9)
        for ax, column, (data, cmap) in zip(subfig.subplots(1, len(GRID_COLUMNS)), GRID_COLUMNS, panels):
            ax.imshow(data, cmap=cmap, vmin=0.0, vmax=1.0, interpolation="nearest")
            ax.set_axis_off()
            if row == 0:
                ax.set_title(column, fontsize=9)
    return _save_atomically(fig, out_path, dpi)


def dice_order(per_patient: Mapping[str, float]) -> list[str]:
    """Patients with a defined Dice, best first (ties by patient id); NaN patients are left out."""
    finite = [(patient, float(dice)) for patient, dice in per_patient.items() if not math.isnan(dice)]
    return [patient for patient, _ in sorted(finite, key=lambda item: (-item[1], item[0]))]


def dice_bar_chart(
    per_patient: Mapping[str, float],
    out_path: str | Path,
    title: str = "Per-patient Dice",
    dpi: int = 100,
    lesion_free_fp: Mapping[str, float] | None = None,
) -> Path:
    """Bar chart of per-patient (per-volume) Dice, best first, with the mean and median as lines.

    A patient whose true and predicted volumes are both empty has Dice NaN (undefined, not 0 or 1).
    Such patients get no bar: they are left out of the mean and median (nanmean, nanmedian) and their
    number is stated in the title, e.g. "Per-patient Dice (27 patients; 3 with empty truth and
    prediction left out)".

    Lesion-free patients named in ``lesion_free_fp`` are drawn apart, in a panel on the right: one bar
    each, its height and label the patient's false-positive voxels (red when there are any), since
    their Dice (0 or undefined) says nothing of how much was painted on a healthy brain. The Dice
    panel, its mean and its median then cover the patients with a lesion only.

    Args:
        per_patient: patient id -> Dice in [0, 1] or NaN.
        out_path: PNG file to write (its folder is created).
        title: start of the figure title. Default "Per-patient Dice".
        dpi: resolution. Default 100.
        lesion_free_fp: lesion-free patient id -> false-positive voxels (>= 0). Default None: no
            patient is drawn apart.

    Returns:
        ``out_path`` as a Path.

    Raises:
        ValueError: no patients, a Dice outside [0, 1] that is not NaN, or a negative voxel count.
    """
    lesion_free_fp = dict(lesion_free_fp or {})
    if len(per_patient) == 0 and not lesion_free_fp:
        raise ValueError("per_patient is empty: give at least one patient's Dice")
    for patient, dice in per_patient.items():
        if not (math.isnan(dice) or 0.0 <= dice <= 1.0):
            raise ValueError(f"Dice of patient {patient!r} must be in [0, 1] or NaN, not {dice}")
    for patient, voxels in lesion_free_fp.items():
        if not voxels >= 0:
            raise ValueError(f"false-positive voxels of patient {patient!r} must be >= 0, not {voxels}")
    with_lesion = {p: d for p, d in per_patient.items() if p not in lesion_free_fp}
    order = dice_order(with_lesion)
    values = np.array([with_lesion[patient] for patient in order], dtype=float)
    n_nan = len(with_lesion) - len(order)
    heading = f"{title} ({len(order)} patients" + (" with a lesion" if lesion_free_fp else "")
    heading += f"; {n_nan} with empty truth and prediction left out" if n_nan else ""
    heading += f"; {len(lesion_free_fp)} lesion-free at right)" if lesion_free_fp else ")"
    width = max(6.0, 2.0 + 0.25 * (len(with_lesion) + len(lesion_free_fp)))
    fig = Figure(figsize=(width + (2.0 if lesion_free_fp else 0.0), 4.5), layout="constrained")
    if lesion_free_fp:
        ax, ax_free = fig.subplots(1, 2, width_ratios=[width, 2.0 + 0.15 * len(lesion_free_fp)])
        _draw_false_positives(ax_free, lesion_free_fp)
    else:
        ax = fig.subplots()
    ax.set_title(heading, fontsize=10)
    ax.set_ylabel("Dice")
    ax.set_ylim(0.0, 1.05)
    if order:
        ax.bar(range(len(order)), values, color="tab:blue", label="patient")
        ax.axhline(values.mean(), color="tab:red", linestyle="--", label=f"mean {values.mean():.3f}")
        median = float(np.median(values))
        ax.axhline(median, color="tab:orange", linestyle=":", label=f"median {median:.3f}")
        ax.set_xticks(range(len(order)), order, rotation=90, fontsize=7)
        ax.set_xlim(-0.6, len(order) - 0.4)
        ax.legend(loc="upper right", fontsize=8)  # bars are sorted: the lowest end right
    else:
        ax.text(0.5, 0.5, "no patient with a defined Dice", ha="center", va="center", transform=ax.transAxes)
        ax.set_xticks([])
    return _save_atomically(fig, out_path, dpi)


def _draw_false_positives(ax: Any, lesion_free_fp: Mapping[str, float]) -> None:
    """Lesion-free patients, most false-positive voxels first, each bar labelled with its count."""
    order = sorted(lesion_free_fp, key=lambda patient: (-lesion_free_fp[patient], patient))
    voxels = [float(lesion_free_fp[patient]) for patient in order]
    colours = ["tab:red" if v > 0 else "tab:green" for v in voxels]
    bars = ax.bar(range(len(order)), voxels, color=colours)
    ax.bar_label(bars, labels=[f"{v:,.0f}" for v in voxels], fontsize=7)
    ax.set_ylim(0.0, max(max(voxels), 1.0) * 1.2)
    ax.set_title("Lesion-free patients", fontsize=10)
    ax.set_ylabel("false-positive voxels")
    ax.set_xticks(range(len(order)), order, rotation=90, fontsize=7)
    ax.set_xlim(-0.6, len(order) - 0.4)


def pick_lesion_slices(
    labels: Sequence[np.ndarray], patients: Sequence[str] | None = None, n: int = 8, seed: int = 0
) -> list[int]:
    """Indices of up to ``n`` slices whose true mask is not empty, spread over as many patients as possible.

    Patients are visited in a seeded random order, taking one random lesion slice from each per round,
    until ``n`` slices are picked; so ``n`` slices come from ``n`` different patients when that many
    patients have lesions.

    Args:
        labels: true masks, one per slice (any shape; nonzero is lesion).
        patients: patient id of each slice, same length as ``labels``. Default None: every slice counts
            as its own patient.
        n: number of slices wanted; fewer are returned when fewer slices have lesions. Default 8.
        seed: seed of the random choice; the same inputs and seed give the same slices. Default 0.

    Returns:
        the picked indices into ``labels``, ascending.

    Raises:
        ValueError: ``n`` below 1, or ``patients`` of another length than ``labels``.
    """
    if n < 1:
        raise ValueError(f"n must be at least 1, not {n}")
    if patients is None:
        patients = [str(i) for i in range(len(labels))]
    if len(patients) != len(labels):
        raise ValueError(
            f"patients must have one id per label: got {len(patients)} ids for {len(labels)} labels"
        )
    by_patient: dict[str, list[int]] = {}
    for index, (label, patient) in enumerate(zip(labels, patients)):
        if np.any(np.asarray(label)):
            by_patient.setdefault(str(patient), []).append(index)
    rng = np.random.default_rng(seed)
    queues = [list(rng.permutation(by_patient[p])) for p in rng.permutation(sorted(by_patient))]
    picked: list[int] = []
    while len(picked) < n and any(queues):
        for queue in queues:
            if queue and len(picked) < n:
                picked.append(int(queue.pop()))
    return sorted(picked)
