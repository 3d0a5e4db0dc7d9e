"""The head box of crop "head": hand-made volumes of known extent, the hard phantom, the cache."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import pytest

from pipeline.data import head_box as hb
from pipeline.data.head_box import head_box, head_box_file, tiff_head_box
from pipeline.data.volume_stats import read_tiff_volume, volume_bounds

H, W = 96, 128


def _ellipse_volume(background: float, seed: int = 0) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """(6, 3, 96, 128) uint8: an ellipse of tissue (centre (40, 70), semi-axes 25 x 35 pixels)
    on slices 1-4, on a background of ``background`` (+-4 noise); FLAIR the brightest channel.
    Returns the volume and the ellipse's pixel extent (first row, last row, first col, last col),
    counted here from the ellipse's equation."""
    rng = np.random.default_rng(seed)
    volume = (
        np.clip(rng.normal(background, 2.0, size=(6, 3, H, W)), 0, 255)
        if background
        else np.zeros((6, 3, H, W))
    )
    rows, cols = np.mgrid[0:H, 0:W]
    inside = ((rows - 40) / 25) ** 2 + ((cols - 70) / 35) ** 2 <= 1
    for k in range(1, 5):
        tissue = rng.normal(120, 15, size=(3, H, W)).clip(60, 250)
        tissue[1] *= 1.3
        volume[k][:, inside] = tissue[:, inside]
    extent = (
        int(rows[inside].min()),
        int(rows[inside].max()),
        int(cols[inside].min()),
        int(cols[inside].max()),
    )
    return volume.clip(0, 255).astype(np.uint8), extent


def _expected_box(extent: tuple[int, int, int, int], frame_side: int) -> list[int]:
    """By hand: the extent plus a margin of 3% of the frame's larger side (rounded up), made square
    around its centre, half-open."""
    r0, r1, c0, c1 = extent
    margin = math.ceil(0.03 * frame_side)
    height, width = r1 - r0 + 1 + 2 * margin, c1 - c0 + 1 + 2 * margin
    side = max(height, width)
    top = r0 - margin - (side - height) // 2
    left = c0 - margin - (side - width) // 2
    return [top, left, top + side, left + side]


@pytest.mark.parametrize("background", [0.0, 20.0])
def test_the_box_of_an_ellipse_is_its_extent_plus_the_margin(background):
    volume, extent = _ellipse_volume(background)
    assert extent == (15, 65, 35, 105)  # the ellipse's equation: 40 +- 25 rows, 70 +- 35 columns
    box = head_box(volume)
    assert box == _expected_box(extent, W)
    top, left, bottom, right = box
    assert bottom - top == right - left == 71 + 2 * 4  # the larger extent (71 columns) plus 2 margins
    if background:
        # the 10%-of-reference head rule of intensity "volume" takes the noisy background for head
        brightest = volume.max(axis=1).astype(float)
        assert (
            brightest > 0.1 * np.percentile(brightest, 99.9)
        ).mean() > 0.5  # the ellipse: 15% of the voxels


def test_specks_and_hot_voxels_do_not_stretch_the_box():
    volume, extent = _ellipse_volume(20.0, seed=1)
    volume[2, :, 90, 3] = 255  # a hot voxel in a corner
    volume[3, :, 2:4, 120:122] = 250  # a 2 x 2 speck
    assert head_box(volume) == _expected_box(extent, W)


def test_a_broken_scalp_ring_around_the_brain_is_covered_whole():
    """Ring and brain separated by a dark skull: the box covers the ring (not just the brain)."""
    volume = np.full((3, 3, H, W), 20, np.uint8)
    rows, cols = np.mgrid[0:H, 0:W]
    radius = np.hypot(rows - 48, cols - 64)
    volume[:, :, radius <= 25] = 150  # brain
    ring = (radius >= 32) & (radius <= 36) & (cols < 90)  # scalp, open on the right
    volume[:, :, ring] = 200
    top, left, bottom, right = head_box(volume)
    # the ring's extent: rows 12..84 (73), columns 28..89 (62); margin 4; squared on the rows
    assert (top, bottom) == (12 - 4, 84 + 1 + 4)
    assert (left, right) == (28 - 4 - (81 - 70) // 2, 28 - 4 - (81 - 70) // 2 + 81)


def test_a_blank_volume_gives_the_whole_frame():
    assert head_box(np.zeros((4, 3, H, W), np.uint8)) == [0, 0, H, W]
    assert head_box(np.full((2, 3, 10, 12), 7.0)) == [0, 0, 10, 12]
    with pytest.raises(ValueError, match="slices, channels, rows, columns"):
        head_box(np.zeros((3, H, W)))


def _patient_files(folder: Path) -> list[str]:
    files = [p for p in folder.glob("*.tif") if not p.stem.endswith("_mask")]
    return [str(p) for p in sorted(files, key=lambda p: int(p.stem.rsplit("_", 1)[1]))]


@pytest.mark.slow
def test_a_hard_phantom_patient_gets_a_box_clearly_smaller_than_the_frame(tmp_path):
    import tifffile

    from pipeline.data.phantom import generate_dataset

    root = generate_dataset(tmp_path / "hard", n_patients=2, seed=0, hard=True)
    for folder in sorted(p for p in Path(root).iterdir() if p.is_dir()):
        files = _patient_files(folder)
        volume = read_tiff_volume(files)
        frame = volume.shape[-2] * volume.shape[-1]
        brightest = volume.max(axis=1).astype(float)
        top, left, bottom, right = tiff_head_box(files)
        assert bottom - top == right - left
        assert (bottom - top) ** 2 < 0.93 * frame
        inside = np.zeros(volume.shape[-2:], bool)
        inside[max(top, 0) : bottom, max(left, 0) : right] = True
        # outside the box only background (18-24 of 255, noise, a few artefact pixels at most) ...
        outside = brightest[:, ~inside]
        assert np.median(outside) < 30 and np.mean(outside > 60) < 0.001
        # ... and every lesion voxel inside it
        masks = np.stack([tifffile.imread(f.replace(".tif", "_mask.tif")) for f in files])
        assert not masks[:, ~inside].any()
        assert volume_bounds(volume)  # the same volume reader serves both per-patient computations


def test_boxes_are_cached_beside_the_split_file(tiny_phantom, tmp_path, caplog):
    from pipeline.data.discovery import discover, fingerprint

    records = discover(tiny_phantom)
    cache = head_box_file(tmp_path / "splits" / "x.json")
    assert cache == tmp_path / "splits" / "x.head_box.json"
    boxes = hb.patient_boxes(records, cache, fingerprint(records))
    assert cache.exists() and set(boxes) == {r["patient"] for r in records}
    first = next(iter(sorted(boxes)))
    files = [r["image"] for r in sorted(records, key=lambda r: r["slice"]) if r["patient"] == first]
    assert boxes[first] == tiff_head_box(files)
    with caplog.at_level(logging.INFO, logger="pipeline.data.volume_stats"):
        assert hb.patient_boxes(records, cache, fingerprint(records)) == boxes
    assert "head boxes of 4 patients read from" in caplog.text


def test_the_otsu_threshold_is_skimages():
    from skimage.filters import threshold_otsu

    rng = np.random.default_rng(4)
    volumes = [
        rng.integers(0, 256, (5, 30, 30)).astype(np.uint8),
        rng.integers(-50, 4000, (3, 20, 20)).astype(np.int16),  # sparse integer values
        (rng.random((4, 20, 20)) * 1000).astype(np.float32),
        np.concatenate([rng.normal(20, 2, 500), rng.normal(150, 30, 300)]),
    ]
    for volume in volumes:
        assert hb.otsu_threshold(volume) == pytest.approx(float(threshold_otsu(volume)), rel=1e-6)
