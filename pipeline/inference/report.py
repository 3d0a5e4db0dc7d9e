"""``report.html``: one self-contained page for a whole inference run, for a person to read.

Decisions:

- **Self-contained**: one HTML file, inline CSS, every image a base64 PNG ``data:`` URI; no
  script, no external link, so it can be mailed or archived alone. Written atomically.
- **Header**: "research use only: not a medical device, not for diagnosis"; the model's identity
  (:mod:`pipeline.inference.model_identity`; absent values "unknown"); the settings (threshold,
  largest component); counts of inputs segmented, kept from an earlier run and failed.
- **Per input** (``<section class="input" data-input="NAME" data-status="...">``, sorted by
  name): status (segmented / kept from an earlier run / failed), the lesion volume in mL (voxels
  when the spacing is unknown), slices with lesion, the share of the largest component, the
  flags (sequences replaced by FLAIR; FLAIR only = unreliable; the error of a failed input), and
  an overlay montage. With ``uncertainty`` on, the input's scores and the map's file, and a flag
  when the score is above the threshold (``data-uncertain="true"`` on the section).
- **Montage** (:func:`montage_png`): up to ``max_panels`` (6) slices with the most lesion voxels,
  shown in slice order side by side in one PNG (``data-slices``: their 0-based indices k; the
  caption counts from 1 as the TIFF file names do). Each panel is FLAIR in grey (the network's
  input channel 1, downsampled to at most 128 px, grey levels from the 1st to the 99th
  percentile of the panels shown, resized bilinearly) with the mask's outline in red (its
  border pixels, 2 px wide, inside the lesion, on the mask resized to the panel); panels are
  160 px high, as wide as the slice's aspect gives. Composed with numpy and PIL: matplotlib's
  figures cost 150 ms per patient, more than the demo network's forward passes of its slices.
  No lesion: no image, the text says so. The montage is also written beside the mask as
  ``<name>_overlay.png``, so a run resumed with ``skip_existing`` shows it again.
"""

from __future__ import annotations

import base64
import html
import io
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.atomic import write_text
from pipeline.inference.model_identity import describe

PANEL_HEIGHT = 160
THUMBNAIL = 128  # largest side of the FLAIR kept per slice for the montage
MAX_PANELS = 6
OUTLINE = (255, 0, 0)  # red
OUTLINE_PX = 2  # outline width inside the lesion, in montage pixels
DISCLAIMER = "Research use only: not a medical device, not for diagnosis or treatment decisions."
STATUS = {"segmented": "segmented", "kept": "kept from an earlier run (skip_existing)", "failed": "FAILED"}
_STYLE = (
    "body{font-family:sans-serif;margin:1.5em;max-width:70em}table{border-collapse:collapse}"
    "td,th{border:1px solid #ccc;padding:2px 8px;text-align:left}.flag{color:#a00;font-weight:bold}"
    ".input{border-top:2px solid #444;margin-top:1.2em}.warning{background:#fee;padding:.5em}"
)


def montage_slices(mask_kji: np.ndarray, max_panels: int = MAX_PANELS) -> list[int]:
    """The slices (0-based, ascending) of the montage: the ``max_panels`` with most lesion voxels
    (ties: the lower slice), slices without lesion never."""
    counts = np.asarray(mask_kji).reshape(len(mask_kji), -1).astype(bool).sum(axis=1)
    order = sorted((k for k in range(len(counts)) if counts[k]), key=lambda k: (-counts[k], k))
    return sorted(order[:max_panels])


def montage_png(
    flair: np.ndarray, mask_kji: np.ndarray, max_panels: int = MAX_PANELS
) -> tuple[bytes, list[int]]:
    """The overlay montage as PNG bytes and its slices; ``(b"", [])`` when the mask is empty.

    Args:
        flair: (n_slices, h, w) FLAIR per slice at any resolution (stretched to the slice's shape).
        mask_kji: (n_slices, H, W) mask, 0/1.
    """
    from PIL import Image
    from scipy import ndimage

    chosen = montage_slices(mask_kji, max_panels)
    if not chosen:
        return b"", []
    height, width = mask_kji.shape[1:]
    panel_w = max(1, round(PANEL_HEIGHT * width / height))
    shown = np.asarray(flair, dtype=np.float32)[chosen]
    low, high = np.percentile(shown, [1, 99]) if shown.size else (0.0, 1.0)
    high = high if high > low else low + 1.0
    size = (panel_w, PANEL_HEIGHT)
    panels = []
    for n, k in enumerate(chosen):
        # grey levels 0..254; palette entry 255 is the outline: one byte a pixel to encode, not three
        grey = (np.clip((shown[n] - low) / (high - low), 0.0, 1.0) * 254).astype(np.uint8)
        grey = np.asarray(Image.fromarray(grey).resize(size, Image.Resampling.BILINEAR))
        lesion = Image.fromarray(np.asarray(mask_kji[k], dtype=np.uint8) * np.uint8(255))
        lesion = np.asarray(lesion.resize(size, Image.Resampling.NEAREST)) > 127
        edge = lesion & ~ndimage.binary_erosion(lesion, iterations=OUTLINE_PX)
        panel = grey.copy()
        panel[edge] = 255
        panels.append(panel)
    image = Image.fromarray(np.concatenate(panels, axis=1))  # "L"; putpalette makes it "P"
    image.putpalette([level for g in range(255) for level in (g, g, g)] + list(OUTLINE))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue(), chosen


def new_overlay(path: Path, flair: np.ndarray | None, mask_kji: np.ndarray) -> tuple[bytes, list[int]]:
    """Draw and write the montage of a mask just written (removing an earlier run's when there is
    none now: no lesion, or no FLAIR given); the PNG bytes and slices."""
    from pipeline.atomic import write_atomically

    png, chosen = (b"", []) if flair is None else montage_png(np.asarray(flair, np.float32), mask_kji)
    if png:
        write_atomically(Path(path), lambda tmp: tmp.write_bytes(png))
    else:
        Path(path).unlink(missing_ok=True)
    return png, chosen


def kept_overlay(path: Path, mask_kji: np.ndarray, report: bool = True) -> tuple[bytes, list[int]]:
    """The montage written by an earlier run for ``mask_kji`` (kept by ``skip_existing``), if any."""
    if not report or not np.any(mask_kji) or not Path(path).is_file():
        return b"", []
    return Path(path).read_bytes(), montage_slices(mask_kji)


def _volume_text(row: Mapping[str, Any]) -> str:
    if row.get("lesion_volume_ml", "") != "":
        return f"{float(row['lesion_volume_ml']):.2f} mL ({row['lesion_voxels']} voxels)"
    return f"{row['lesion_voxels']} voxels (voxel size unknown: no volume in mL)"


def _flags(entry: Mapping[str, Any]) -> list[str]:
    flags = []
    if entry.get("substituted"):
        flags.append(f"sequences missing, replaced by FLAIR: {', '.join(entry['substituted'])}")
    if entry.get("flair_only"):
        flags.append(
            "FLAIR only (copied into all three channels): unreliable, the network never saw such input"
        )
    uncertainty = entry.get("uncertainty")
    if uncertainty and uncertainty["flagged"]:
        flags.append(
            f"uncertain: {uncertainty['score']} {uncertainty['value']:.3f} is above the threshold "
            f"{uncertainty['threshold']:g} ({uncertainty['method']} samples disagree): check this mask "
            "with particular care"
        )
    if entry.get("error"):
        flags.append(f"error: {entry['error']}")
    return flags


def _uncertainty_text(entry: Mapping[str, Any]) -> str:
    uncertainty, row = entry.get("uncertainty"), entry.get("row") or {}
    scores = ", ".join(
        f"{name.removeprefix('uncertainty_')} {float(row[name]):.3f}"
        for name in ("uncertainty_disagreement", "uncertainty_entropy")
        if row.get(name, "") != ""
    )
    e = html.escape
    return (
        f"<p>Uncertainty ({e(uncertainty['method'])} samples): {e(scores)}; flagged above "
        f"{e(uncertainty['score'])} {uncertainty['threshold']:g}; per-voxel variance in "
        f"{e(uncertainty['map'])}</p>"
    )


def _section(entry: Mapping[str, Any]) -> str:
    e = html.escape
    name, status, row = entry["name"], entry["status"], entry.get("row")
    uncertain = entry.get("uncertainty")
    marker = "" if not uncertain else f' data-uncertain="{str(bool(uncertain["flagged"])).lower()}"'
    parts = [
        f'<section class="input" data-input="{e(name)}" data-status="{e(status)}"{marker}>',
        f"<h2>{e(name)}</h2>",
    ]
    parts.append(f"<p>Status: {e(STATUS[status])}</p>")
    if row:
        share = row.get("largest_component_share", "")
        parts.append(
            f"<p>Lesion volume: <b>{e(_volume_text(row))}</b>; slices with lesion: "
            f"{e(str(row['slices_with_lesion']))} of {e(str(row['n_slices']))}"
            + (f"; largest component {float(share):.0%} of the lesion" if share != "" else "")
            + "</p>"
        )
    if uncertain:
        parts.append(_uncertainty_text(entry))
    for flag in _flags(entry):
        parts.append(f'<p class="flag">{e(flag)}</p>')
    png, chosen = entry.get("montage") or b"", entry.get("slices") or []
    if png:
        caption = ", ".join(str(k + 1) for k in chosen)
        data = base64.b64encode(png).decode("ascii")
        parts.append(
            f'<figure><img src="data:image/png;base64,{data}" alt="FLAIR with the mask outline, '
            f'slices {caption}" data-slices="{" ".join(map(str, chosen))}">'
            f"<figcaption>FLAIR with the mask outlined in red: the {len(chosen)} slices with most "
            f"lesion, slices {e(caption)} (counted from 1)</figcaption></figure>"
        )
    elif row and int(row["lesion_voxels"]) == 0:
        parts.append("<p>No lesion found.</p>")
    elif row:
        parts.append("<p>No overlay available (outputs kept from an earlier run without one).</p>")
    parts.append("</section>")
    return "\n".join(parts)


def render(
    entries: Sequence[Mapping[str, Any]], model_info: Mapping[str, Any] | None, settings: Mapping[str, Any]
) -> str:
    """The page (see the module docstring) for ``entries``: dicts with ``name``, ``status``
    ("segmented", "kept", "failed"), ``row`` (the CSV row or None), ``substituted``, ``flair_only``,
    ``error``, ``montage`` (PNG bytes or b"") and ``slices``."""
    e = html.escape
    counts = {s: sum(1 for x in entries if x["status"] == s) for s in STATUS}
    model = "".join(f"<tr><th>{e(k)}</th><td>{e(v)}</td></tr>" for k, v in describe(model_info).items())
    setting = "".join(f"<tr><th>{e(str(k))}</th><td>{e(str(v))}</td></tr>" for k, v in settings.items())
    head = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8"><title>FLAIR abnormality segmentation report</title>',
        f"<style>{_STYLE}</style></head><body>",
        "<h1>FLAIR abnormality segmentation</h1>",
        f'<p class="warning"><b>{e(DISCLAIMER)}</b> Automatic masks of a research model (research use only); '
        "every mask needs a check by a qualified reader.</p>",
        f"<p>Written {e(time.strftime('%Y-%m-%d %H:%M:%S'))}: {len(entries)} inputs, {counts['segmented']} "
        f"segmented, {counts['kept']} kept from an earlier run, {counts['failed']} failed.</p>",
        f'<h2>Model</h2><table class="model">{model}</table>',
        f'<h2>Settings</h2><table class="settings">{setting}</table>',
    ]
    body = [_section(entry) for entry in sorted(entries, key=lambda x: x["name"])]
    return "\n".join([*head, *body, "</body></html>", ""])


def write_report(
    path: str | os.PathLike,
    entries: Sequence[Mapping[str, Any]],
    model_info: Mapping[str, Any] | None,
    settings: Mapping[str, Any],
) -> Path:
    """Write ``report.html`` atomically; its path."""
    return write_text(Path(path), render(entries, model_info, settings))
