"""Inference with a model trained with ``intensity`` "volume": each slice scaled by its patient's
bounds, the same for a TIFF patient and for that patient as a 3-channel volume."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import tifffile

from pipeline.data.volume_stats import tiff_bounds
from pipeline.inference.inputs import find_inputs
from pipeline.inference.preprocessing import TRAIN_CONFIG, image_preprocessing
from pipeline.inference.slice_dataset import SliceDataset

SIDE, SLICES = 16, 4


def _patient(root: Path) -> tuple[list[Path], np.ndarray]:
    rng = np.random.default_rng(7)
    volume = np.zeros((SLICES, SIDE, SIDE, 3), np.uint8)
    volume[:, 3:13, 2:14] = rng.integers(20, 200, (SLICES, 10, 12, 3))
    volume[1, 6:9, 6:9, 1] = 250  # a bright spot on one slice only
    folder = root / "tiff" / "TCGA_AA_0001_20000101"
    folder.mkdir(parents=True)
    paths = []
    for k in range(SLICES):
        paths.append(folder / f"{folder.name}_{k + 1}.tif")
        tifffile.imwrite(paths[-1], volume[k])
    # the same patient as (i, j, k, c): columns i, rows j
    nifti = root / "nifti" / "case.nii.gz"
    nifti.parent.mkdir()
    nib.save(
        nib.Nifti1Image(volume.transpose(2, 1, 0, 3).astype(np.float32), np.diag([-1.0, -1.0, 1.0, 1.0])),
        nifti,
    )
    return paths, volume


def test_slices_are_scaled_by_the_patients_bounds_from_tiff_and_from_a_volume(tmp_path):
    paths, volume = _patient(tmp_path)
    config = json.loads(TRAIN_CONFIG.read_text()) | {"intensity": "volume"}
    bounds = np.asarray(tiff_bounds(paths))  # training's bounds of this patient (tested by hand elsewhere)
    assert bounds.shape == (3, 2) and np.all(bounds[:, 1] > bounds[:, 0])
    # by hand: per channel, clip to the bounds and scale to [0, 1]; no resize at the slice's size
    channels_first = volume.transpose(0, 3, 1, 2).astype(np.float64)
    low, high = bounds[None, :, 0, None, None], bounds[None, :, 1, None, None]
    expected = np.clip((channels_first - low) / (high - low), 0.0, 1.0)

    for folder in ("tiff", "nifti"):
        dataset = SliceDataset(find_inputs(tmp_path / folder), image_preprocessing(SIDE, config))
        got = np.stack([np.asarray(dataset[k]["image"]) for k in range(SLICES)])
        np.testing.assert_allclose(got, expected, atol=1e-5, err_msg=folder)
    # the tutorial's per-slice scaling differs: the bright spot stretches slice 1 alone
    plain = SliceDataset(find_inputs(tmp_path / "tiff"), image_preprocessing(SIDE))
    assert not np.allclose(np.asarray(plain[0]["image"]), expected[0], atol=1e-3)
