"""Inference with a model trained with ``crop`` "head": each slice cropped to its input's head box,
the same for a TIFF patient and for that patient as a 3-channel volume, and the masks mapped back."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import tifffile
import torch

from pipeline.data.head_box import head_box
from pipeline.inference.inputs import find_inputs
from pipeline.inference.preprocessing import TRAIN_CONFIG, box_key, crop_of, image_preprocessing
from pipeline.inference.slice_dataset import SliceDataset
from pipeline.inference.slice_masks import batch_masks, engine_batch

SIDE, ROWS, COLS, SLICES = 32, 60, 50, 4


def _patient(root: Path) -> np.ndarray:
    """(k, rows, cols, 3) uint8: a noisy background (about 20) and a bright rectangle of 'head',
    as kaggle TIFF slices and as one (i, j, k, c) NIfTI volume."""
    rng = np.random.default_rng(3)
    volume = rng.integers(16, 25, (SLICES, ROWS, COLS, 3)).astype(np.uint8)
    volume[:, 10:40, 12:35] = rng.integers(90, 220, (SLICES, 30, 23, 3))
    folder = root / "tiff" / "TCGA_AA_0001_20000101"
    folder.mkdir(parents=True)
    for k in range(SLICES):
        tifffile.imwrite(folder / f"{folder.name}_{k + 1}.tif", volume[k], photometric="rgb")
    nifti = root / "nifti" / "case.nii.gz"
    nifti.parent.mkdir()
    image = nib.Nifti1Image(volume.transpose(2, 1, 0, 3).astype(np.float32), np.diag([-1.0, -1.0, 1.0, 1.0]))
    nib.save(image, nifti)
    return volume


def _by_hand(volume: np.ndarray, box) -> np.ndarray:
    """Min-max per slice (all channels), the box cut out (zeros past the image), area resize."""
    top, left, bottom, right = box
    out = []
    for chw in volume.transpose(0, 3, 1, 2).astype(np.float64):
        chw = (chw - chw.min()) / (chw.max() - chw.min())
        padded = np.zeros((3, bottom - top, right - left))
        r0, r1, c0, c1 = max(top, 0), min(bottom, ROWS), max(left, 0), min(right, COLS)
        padded[:, r0 - top : r1 - top, c0 - left : c1 - left] = chw[:, r0:r1, c0:c1]
        area = torch.nn.functional.adaptive_avg_pool2d(torch.from_numpy(padded)[None], (SIDE, SIDE))
        out.append(area[0].numpy())
    return np.stack(out)


def test_slices_are_cropped_to_the_inputs_head_box_from_tiff_and_from_a_volume(tmp_path):
    volume = _patient(tmp_path)
    config = json.loads(TRAIN_CONFIG.read_text()) | {"crop": "head", "intensity": "slice"}
    assert crop_of(config) == "head" and crop_of(TRAIN_CONFIG) == "none"
    preprocessing = image_preprocessing(SIDE, config)
    assert box_key(preprocessing) == "head_box" and box_key(image_preprocessing(SIDE)) is None
    # the rectangle: rows 10..39, columns 12..34; margin ceil(0.03 * 60) = 2: rows 8..41 (34),
    # columns 10..36 (27) widened to 34 around their centre: 10 - (34 - 27) // 2 = 7
    box = [8, 7, 42, 41]
    assert head_box(volume.transpose(0, 3, 1, 2)) == box
    expected = _by_hand(volume, box)
    for folder in ("tiff", "nifti"):
        dataset = SliceDataset(find_inputs(tmp_path / folder), preprocessing)
        items = [dataset[k] for k in range(SLICES)]
        assert all(
            item["head_box"] == box and (item["height"], item["width"]) == (ROWS, COLS) for item in items
        )
        got = np.stack([np.asarray(item["image"]) for item in items])
        np.testing.assert_allclose(got, expected, atol=1e-5, err_msg=folder)
        # the masks of a batch: probabilities 1 on the network's frame are the box, on the slice
        batch = torch.utils.data.default_collate(items)
        fields = engine_batch(batch, {"pred": torch.ones(SLICES, 1, SIDE, SIDE)})
        assert fields[-1] == [box] * SLICES
        masks = batch_masks(fields[2], list(zip(fields[3], fields[4])), 0.5, fields[-1])
        inside = np.zeros((ROWS, COLS), np.uint8)
        inside[8:42, 7:41] = 1
        for mask in masks:
            np.testing.assert_array_equal(mask, inside)
    plain = SliceDataset(find_inputs(tmp_path / "tiff"), image_preprocessing(SIDE))
    assert "head_box" not in plain[0]


def test_bad_crop_values_name_the_key(tmp_path):
    from pipeline.data.prepare import prepare_data

    for bad in ("Head", "box", None):
        config = json.loads(TRAIN_CONFIG.read_text()) | {"crop": bad}
        with pytest.raises(ValueError, match=r"crop must be 'none'.*or 'head'.*set the key 'crop'"):
            image_preprocessing(SIDE, config)
        with pytest.raises(ValueError, match=r"crop must be 'none'.*or 'head'"):
            prepare_data(str(tmp_path), str(tmp_path / "s.json"), str(tmp_path / "p"), crop=bad)
