"""Per-patient intensity bounds (intensity "volume"): by hand, from disk and from memory, cached."""

from __future__ import annotations

import json
import logging
import math
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import tifffile

from pipeline.data import volume_stats
from pipeline.data.prepare import prepare_data
from pipeline.data.volume_stats import intensity_file, tiff_bounds, volume_bounds


def _percentile(values: list[float], p: float) -> float:
    """Linear interpolation between the closest ranks (numpy's default), written out."""
    ordered = sorted(values)
    rank = p / 100 * (len(ordered) - 1)
    below = math.floor(rank)
    above = min(below + 1, len(ordered) - 1)
    return ordered[below] + (rank - below) * (ordered[above] - ordered[below])


def _by_hand(volume: np.ndarray) -> list[list[float]]:
    """Head: voxels whose brightest channel is above 10% of the 99.9th percentile of the
    brightest channel; then the 1st and 99th percentile of each channel over the head."""
    k, channels, rows, cols = volume.shape
    voxels = [(s, r, c) for s in range(k) for r in range(rows) for c in range(cols)]
    brightest = {v: max(float(volume[v[0], ch, v[1], v[2]]) for ch in range(channels)) for v in voxels}
    threshold = 0.1 * _percentile(list(brightest.values()), 99.9)
    head = [v for v in voxels if brightest[v] > threshold] or voxels
    bounds = []
    for ch in range(channels):
        values = [float(volume[s, ch, r, c]) for s, r, c in head]
        bounds.append([_percentile(values, 1), _percentile(values, 99)])
    return bounds


def _head_phantom(seed: int = 0) -> np.ndarray:
    """(5, 3, 16, 20): dark noisy background, a 'head' of tissue, one channel brighter, a hot voxel."""
    rng = np.random.default_rng(seed)
    volume = rng.integers(0, 6, size=(5, 3, 16, 20)).astype(np.float32)  # background noise
    volume[:, :, 3:13, 4:16] = rng.normal(100, 15, size=(5, 3, 10, 12)).clip(20, 250)
    volume[:, 1, 3:13, 4:16] *= 1.6  # FLAIR brighter than the T1s
    volume[2, 1, 6, 8] = 4000.0  # one hot voxel (an artefact) must not hide the tissue
    return volume


def test_bounds_match_the_hand_computation():
    volume = _head_phantom()
    got = volume_bounds(volume)
    expected = _by_hand(volume)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-9)
    # the background noise (values 0..5) is not head: every lower bound lies within the tissue
    assert all(lo >= 20 for lo, _ in got)
    assert got[1][1] > 1.4 * got[0][1]  # each channel gets its own bounds
    assert all(isinstance(x, float) for pair in got for x in pair)


def test_background_share_does_not_move_the_bounds():
    """The same head in a field of view twice as large (more background) keeps its bounds."""
    volume = _head_phantom(1)
    volume[2, 1, 6, 8] = volume[2, 1, 6, 9]  # no hot voxel here
    larger = np.zeros((5, 3, 32, 40), np.float32)
    larger[:, :, :16, :20] = volume
    np.testing.assert_allclose(volume_bounds(larger), volume_bounds(volume), rtol=0, atol=1e-9)
    # whereas percentiles of all voxels, background included, would move
    assert np.percentile(larger[:, 0], 99) < np.percentile(volume[:, 0], 99) - 5


def test_blank_volume_and_bad_shapes():
    assert volume_bounds(np.zeros((2, 3, 4, 4), np.uint8)) == [[0.0, 0.0]] * 3
    for bad in (np.zeros((3, 4, 4)), np.zeros((0, 3, 4, 4))):
        with pytest.raises(ValueError, match="slices, channels, rows, columns"):
            volume_bounds(bad)


def _patient_files(root: Path, patient: str) -> list[str]:
    """The image files of one patient, in slice order."""
    files = [p for p in (root / patient).glob("*.tif") if not p.stem.endswith("_mask")]
    return [str(p) for p in sorted(files, key=lambda p: int(p.stem.rsplit("_", 1)[1]))]


def _nifti_of(files: list[str], path: Path) -> Path:
    """The patient's TIFF slices as one 3-channel NIfTI volume, (i, j, k, c) as nibabel stores it."""
    slices = np.stack([np.moveaxis(tifffile.imread(f), -1, 0) for f in files])  # (k, c, rows, cols)
    data = np.ascontiguousarray(slices.transpose(3, 2, 0, 1)).astype(np.float32)  # (i=cols, j=rows, k, c)
    nib.save(nib.Nifti1Image(data, np.diag([1.0, 1.0, 4.0, 1.0])), path)
    return path


def test_training_bounds_equal_inference_bounds_of_the_same_patient(tiny_phantom, tmp_path):
    """prepare_data (TIFF files) and volume_bounds of the volume read by inference agree exactly."""
    from pipeline.inference.volumes import nifti_input, read_volume

    split = tmp_path / "splits" / "tiny.json"
    data = prepare_data(str(tiny_phantom), str(split), str(tmp_path / "unused"), intensity="volume")
    records = data.train + data.val
    patient = records[0]["patient"]
    files = _patient_files(tiny_phantom, patient)
    assert [r["image"] for r in records if r["patient"] == patient] == files
    from_training = records[0]["intensity"]
    assert all(r["intensity"] == from_training for r in records if r["patient"] == patient)
    assert {json.dumps(r["intensity"]) for r in records} != {json.dumps(from_training)}  # per patient

    nifti = _nifti_of(files, tmp_path / "patient.nii.gz")
    slices = read_volume(nifti_input(nifti, "patient"))
    assert slices.shape[:2] == (len(files), 3) and slices.dtype == np.float32
    assert volume_bounds(slices) == from_training  # bit for bit
    assert tiff_bounds(files) == from_training
    # the hand computation's loops are slow on 256 x 256 slices: every 4th row and column of them
    sub = np.stack([np.moveaxis(tifffile.imread(f), -1, 0) for f in files])[:, :, ::4, ::4]
    np.testing.assert_allclose(volume_bounds(sub), _by_hand(sub), rtol=0, atol=1e-9)


def test_bounds_are_cached_beside_the_split_file(tiny_phantom, tmp_path, monkeypatch, caplog):
    dataset = tmp_path / "data"
    shutil.copytree(tiny_phantom, dataset)
    split = tmp_path / "splits" / "tiny.json"
    first = prepare_data(str(dataset), str(split), str(tmp_path / "unused"), intensity="volume")
    cache = intensity_file(split)
    assert cache == split.with_name("tiny.intensity.json") and cache.is_file()
    stored = json.loads(cache.read_text())
    assert stored["fingerprint"] == first.fingerprint
    assert stored["method"] == {
        "head_fraction": 0.1,
        "reference_percentile": 99.9,
        "percentiles": [1.0, 99.0],
    }
    assert set(stored["patients"]) == set(first.train_patients + first.val_patients)

    def must_not_run(paths):
        raise AssertionError("bounds recomputed although cached")

    monkeypatch.setattr(volume_stats, "tiff_bounds", must_not_run)
    with caplog.at_level(logging.INFO, logger="pipeline.data.volume_stats"):
        again = prepare_data(str(dataset), str(split), str(tmp_path / "unused"), intensity="volume")
    assert "read from" in caplog.text
    assert [r["intensity"] for r in again.train] == [r["intensity"] for r in first.train]
    monkeypatch.undo()

    # a slice rewritten in place (same name) makes the cache stale: computed again
    patient = first.train[0]["patient"]
    files = _patient_files(dataset, patient)
    white = np.full_like(tifffile.imread(files[len(files) // 2]), 255)
    tifffile.imwrite(files[len(files) // 2], white, photometric="rgb", metadata=None)
    third = prepare_data(str(dataset), str(split), str(tmp_path / "unused"), intensity="volume", check=False)
    changed = next(r for r in third.train if r["patient"] == patient)["intensity"]
    assert changed != first.train[0]["intensity"] and changed == tiff_bounds(files)


def test_slice_option_leaves_the_records_as_they_were(tiny_phantom, tmp_path):
    split = tmp_path / "tiny.json"
    data = prepare_data(str(tiny_phantom), str(split), str(tmp_path / "unused"))
    assert all(set(r) == {"image", "label", "patient", "slice"} for r in data.train + data.val)
    assert not intensity_file(split).exists()


@pytest.mark.parametrize("bad", ["Volume", "patient", None])
def test_bad_option_is_refused_before_any_work(tiny_phantom, tmp_path, bad):
    split = tmp_path / "tiny.json"
    with pytest.raises(ValueError, match="intensity must be 'slice' .* or 'volume'"):
        prepare_data(str(tiny_phantom), str(split), str(tmp_path / "unused"), intensity=bad)
    assert not split.exists()


def test_bundle_datalist_gives_each_slice_its_folders_bounds(tmp_path):
    rng = np.random.default_rng(4)
    for patient, gain in (("TCGA_AA_0001_20000101", 1.0), ("TCGA_BB_0002_20000102", 0.5)):
        folder = tmp_path / "data" / patient
        folder.mkdir(parents=True)
        for k in (1, 2, 10):
            image = (rng.integers(40, 250, size=(16, 16, 3)) * gain).astype(np.uint8)
            tifffile.imwrite(folder / f"{patient}_{k}.tif", image, photometric="rgb", metadata=None)
            tifffile.imwrite(folder / f"{patient}_{k}_mask.tif", np.zeros((16, 16), np.uint8))
    plain = volume_stats.bundle_datalist(tmp_path / "data")
    assert [Path(r["image"]).name for r in plain] == [
        "TCGA_AA_0001_20000101_1.tif",
        "TCGA_AA_0001_20000101_10.tif",
        "TCGA_AA_0001_20000101_2.tif",
        "TCGA_BB_0002_20000102_1.tif",
        "TCGA_BB_0002_20000102_10.tif",
        "TCGA_BB_0002_20000102_2.tif",
    ]
    assert all(set(r) == {"image"} for r in plain)
    records = volume_stats.bundle_datalist(tmp_path / "data", "volume")
    for patient in ("TCGA_AA_0001_20000101", "TCGA_BB_0002_20000102"):
        files = _patient_files(tmp_path / "data", patient)
        mine = [r for r in records if Path(r["image"]).parent.name == patient]
        volume = np.stack([np.moveaxis(tifffile.imread(f), -1, 0) for f in files])
        assert all(r["intensity"] == mine[0]["intensity"] for r in mine)
        np.testing.assert_allclose(mine[0]["intensity"], _by_hand(volume), rtol=0, atol=1e-9)
    assert records[0]["intensity"] != records[-1]["intensity"]
    with pytest.raises(ValueError, match="intensity must be"):
        volume_stats.bundle_datalist(tmp_path / "data", "patient")
