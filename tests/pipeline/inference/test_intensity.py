"""Windowing of 12/16-bit sequences onto the 8-bit range of the training slices, by hand and
through read_volume: a 16-bit patient and its 8-bit export give the same network input."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from pipeline.inference.inputs import find_inputs
from pipeline.inference.intensity import window_to_8bit
from pipeline.inference.volumes import read_volume
from tests.dicom_support import write_dicom_series

ROLES = {"t1": 1300.0, "flair": 1800.0, "t1c": 1500.0}  # tissue level of each 12-bit sequence


def test_window_by_hand():
    values = np.arange(0, 1001, dtype=np.uint16)  # 0 is background; 1..1000 the head
    # numpy's linear percentile of 1..1000 (n = 1000): 1 + 0.005 * 999 and 1 + 0.995 * 999
    low, high = 5.995, 995.005
    expected = (np.clip(values, low, high) - low) / (high - low) * 255
    expected[0] = 0.0
    out = window_to_8bit(values)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, expected, atol=1e-3)
    assert out[1] == pytest.approx(0.0, abs=1e-4) and out[-1] == 255.0
    assert out[500] == pytest.approx((500 - low) / (high - low) * 255, abs=1e-3)


def test_what_is_already_8bit_is_left_as_stored():
    eight = np.arange(256, dtype=np.uint8).reshape(16, 16)
    np.testing.assert_array_equal(window_to_8bit(eight), eight.astype(np.float32))
    unit = np.linspace(0.0, 1.0, 50, dtype=np.float32)  # floats within 0..255 (e.g. normalised)
    np.testing.assert_array_equal(window_to_8bit(unit), unit)
    # a 16-bit sequence is windowed even when its values happen to stay below 256
    small = np.array([0, 10, 20, 30, 200], dtype=np.uint16)
    assert window_to_8bit(small).max() == 255.0 and window_to_8bit(small)[0] == 0.0
    # floats outside 0..255 (z-scores): windowed, the zero background stays 0 (black)
    z = np.array([0.0, -2.0, -1.0, 0.5, 3.0], dtype=np.float32)
    out = window_to_8bit(z)
    assert out[0] == 0.0 and out.min() >= 0 and out.max() == 255.0 and np.all(np.diff(out[1:]) > 0)


def test_degenerate_sequences():
    np.testing.assert_array_equal(window_to_8bit(np.zeros((3, 4), np.uint16)), np.zeros((3, 4)))
    constant = np.array([0, 700, 700, 700], np.int16)
    np.testing.assert_array_equal(window_to_8bit(constant), [0.0, 255.0, 255.0, 255.0])
    with_nan = np.array([np.nan, 1000.0, 2000.0, 3000.0], np.float32)
    assert window_to_8bit(with_nan)[0] == 0.0 and np.isfinite(window_to_8bit(with_nan)).all()


def phantom_12bit(level: float, seed: int, shape=(6, 40, 32)) -> np.ndarray:
    """(k, j, i) uint16: a head ellipse of noisy tissue at ``level`` with a lesion, zero air
    around it, and 0.3 % hot voxels (vessels, flow) at up to 4095 in every slice."""
    rng = np.random.default_rng(seed)
    k, j, i = np.indices(shape)
    head = ((j - 20) / 17) ** 2 + ((i - 16) / 13) ** 2 < 1
    volume = np.where(head, rng.normal(level, 0.08 * level, shape), 0.0)
    lesion = ((j - 14 - k) / 4) ** 2 + ((i - 12) / 3) ** 2 < 1
    volume[lesion] *= 1.6
    for slice_k in range(shape[0]):
        inside = np.argwhere(head[slice_k])
        hot = inside[rng.choice(len(inside), max(2, len(inside) * 3 // 1000), replace=False)]
        volume[slice_k][tuple(hot.T)] = rng.uniform(3800, 4095, len(hot))
    return np.clip(np.round(volume), 0, 4095).astype(np.uint16)


def export_8bit(volume: np.ndarray) -> np.ndarray:
    """An 8-bit export as the window is specified (written here with numpy, not the project's
    code): 0.5-99.5th percentile of the non-zero voxels, scaled to 0..255, rounded, air 0."""
    low, high = np.percentile(volume[volume > 0], [0.5, 99.5])
    scaled = np.clip((volume.astype(float) - low) / (high - low), 0.0, 1.0) * 255
    return np.where(volume > 0, np.round(scaled), 0).astype(np.uint8)


def min_max_per_slice(slices: np.ndarray) -> np.ndarray:
    """The training chain's scaling: min-max over each slice, all channels together."""
    low = slices.min(axis=(1, 2, 3), keepdims=True)
    high = slices.max(axis=(1, 2, 3), keepdims=True)
    return (slices - low) / np.maximum(high - low, 1e-12)


def write_nifti_patient(folder: Path, volumes_kji: dict[str, np.ndarray]) -> None:
    folder.mkdir(parents=True)
    for role, volume in volumes_kji.items():
        image = nib.Nifti1Image(np.transpose(volume, (2, 1, 0)), np.diag([-0.9, -0.9, 5.0, 1.0]))
        nib.save(image, folder / f"{folder.name}_{role}.nii.gz")


def write_dicom_patient(folder: Path, volumes_kji: dict[str, np.ndarray], bits: int) -> None:
    for number, (role, volume) in enumerate(volumes_kji.items(), start=1):
        description = {"t1": "AX T1", "flair": "AX FLAIR", "t1c": "AX T1 POST"}[role]
        write_dicom_series(folder / role, volume, description=description, series_number=number, bits=bits)


@pytest.mark.parametrize("fmt", ["nifti", "dicom"])
def test_a_16_bit_patient_and_its_8_bit_export_give_the_same_network_input(tmp_path, fmt):
    raw = {role: phantom_12bit(level, seed) for seed, (role, level) in enumerate(ROLES.items())}
    eight = {role: export_8bit(volume) for role, volume in raw.items()}
    if fmt == "nifti":
        write_nifti_patient(tmp_path / "wide" / "P1", raw)
        write_nifti_patient(tmp_path / "narrow" / "P1", eight)
    else:
        write_dicom_patient(tmp_path / "wide" / "P1", raw, bits=12)
        write_dicom_patient(tmp_path / "narrow" / "P1", eight, bits=8)
    [wide] = find_inputs(tmp_path / "wide")
    [narrow] = find_inputs(tmp_path / "narrow")

    from_16 = min_max_per_slice(read_volume(wide))
    from_8 = min_max_per_slice(read_volume(narrow))

    # the 8-bit export rounds each value by up to 0.5 of 255 levels, and the slice maximum by as
    # much: after min-max scaling by a slice range M (255 here: every slice holds a hot voxel at the
    # top of the window), the two differ by at most 0.5 / M + 0.5 / M
    ranges = read_volume(narrow).max(axis=(1, 2, 3))
    assert ranges.min() == 255
    assert np.abs(from_16 - from_8).max() <= 1.0 / 255 + 1e-6
    # the comparison can fail: without the window, the hot voxels set each slice's maximum and
    # squeeze the brain (raw 12-bit values scaled per slice, channels in the network's order)
    unwindowed = min_max_per_slice(np.stack([raw["t1"], raw["flair"], raw["t1c"]], axis=1).astype(np.float32))
    assert np.abs(unwindowed - from_8).max() > 0.2


def test_scanner_gain_does_not_change_the_network_input(tmp_path):
    """The window follows the percentiles, so two scanners storing the same image with gains 1
    and 3 give one network input (exact up to float32 rounding)."""
    volume = phantom_12bit(1500.0, 7)
    for name, gain in (("a", 1.0), ("b", 3.0)):
        image = nib.Nifti1Image(
            np.transpose(volume * gain, (2, 1, 0)).astype(np.uint16), np.diag([-1, -1, 3, 1.0])
        )
        nib.save(image, tmp_path / f"{name}.nii.gz")
    inputs = find_inputs(tmp_path, allow_flair_only=True)
    first, second = (read_volume(inp) for inp in inputs)
    np.testing.assert_allclose(first, second, atol=1e-3)
    assert first.max() == 255.0


@pytest.mark.parametrize("fmt", ["nifti", "dicom"])
def test_a_16_bit_patient_and_its_8_bit_export_give_the_same_mask(tmp_path, fmt):
    """The whole inference (segment_inputs with a real U-Net) on the two versions of one patient:
    the masks agree but for voxels whose probability lies within float noise of the threshold."""
    import nibabel as nib_
    import torch

    from networks import UNet
    from pipeline.inference.workflow import segment_inputs

    raw = {role: phantom_12bit(level, seed) for seed, (role, level) in enumerate(ROLES.items())}
    eight = {role: export_8bit(volume) for role, volume in raw.items()}
    if fmt == "nifti":
        write_nifti_patient(tmp_path / "wide" / "P1", raw)
        write_nifti_patient(tmp_path / "narrow" / "P1", eight)
    else:
        write_dicom_patient(tmp_path / "wide" / "P1", raw, bits=12)
        write_dicom_patient(tmp_path / "narrow" / "P1", eight, bits=8)
    torch.manual_seed(0)
    network = UNet(n_filters=2, depth=3).eval()
    [narrow] = find_inputs(tmp_path / "narrow")
    side = read_volume(narrow).shape[-1]
    # a threshold that makes about half the voxels lesion, so the masks say something
    with torch.no_grad():
        x = torch.from_numpy(min_max_per_slice(read_volume(narrow)))
        probability = torch.sigmoid(network(x)).numpy()
    threshold = float(np.median(probability))
    masks = {}
    for version in ("wide", "narrow"):
        segment_inputs(find_inputs(tmp_path / version), network, tmp_path / f"out-{version}", side, threshold)
        [path] = (tmp_path / f"out-{version}").rglob("*_mask.nii.gz")
        masks[version] = np.asarray(nib_.load(path).dataobj).astype(bool)
    assert 0.2 < masks["narrow"].mean() < 0.8
    differ = masks["wide"] != masks["narrow"]
    assert differ.mean() < 0.005, f"{differ.sum()} of {differ.size} voxels differ"
