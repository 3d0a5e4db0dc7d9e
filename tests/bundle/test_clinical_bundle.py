"""inference.json from the command line on a clinical mix: every input layout, a bad input, a resume.

One folder holds a kaggle TIFF patient, a BraTS-named NIfTI patient whose sequences lie on
different grids, a patient whose FLAIR and pre-contrast T1 are DICOM series (post-contrast
missing) and a truncated NIfTI. ``python -m monai.bundle run`` must segment the three good ones,
write their outputs, list the bad one in failures.csv and exit non-zero; ``--skip_existing true``
(the string the CLI passes) then segments nothing again, and ``--skip_existing false`` everything.
"""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import tifffile
import torch

from networks import UNet
from tests.dicom_support import write_dicom_series

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "bundle" / "configs"

pytestmark = pytest.mark.slow


def _head(shape_kji: tuple[int, int, int], seed: int, bits: int = 12) -> np.ndarray:
    """A bright disc with a brighter blob on a dark background, ``bits``-bit integers."""
    rng = np.random.default_rng(seed)
    k, j, i = np.meshgrid(*(np.arange(n) for n in shape_kji), indexing="ij")
    n_k, n_j, n_i = shape_kji
    head = ((j - n_j / 2) / (0.4 * n_j)) ** 2 + ((i - n_i / 2) / (0.4 * n_i)) ** 2 < 1
    blob = ((j - 0.6 * n_j) / 4) ** 2 + ((i - 0.4 * n_i) / 4) ** 2 + ((k - n_k / 2) / 1.5) ** 2 < 1
    top = 2**bits - 1
    data = head * (0.4 * top + rng.normal(0, 0.02 * top, head.shape)) * np.where(blob, 1.8, 1.0)
    return np.clip(data, 0, top).astype(np.uint16)


def _dataset(root: Path) -> list[Path]:
    """The clinical mix under ``root``; returns the DICOM FLAIR's files in slice order."""
    tiff = root / "TCGA_AA_0001_20000101"
    rng = np.random.default_rng(0)
    for k in (1, 2, 3):
        tiff.mkdir(parents=True, exist_ok=True)
        tifffile.imwrite(tiff / f"{tiff.name}_{k}.tif", rng.integers(0, 255, (32, 32, 3), dtype=np.uint8))
    brats = root / "nifti" / "BraTS20_Training_001"
    brats.mkdir(parents=True)
    flair = _head((5, 32, 32), 1)
    nib.save(
        nib.Nifti1Image(flair.transpose(2, 1, 0), np.diag([-1.0, -1.0, 3.0, 1.0])),
        brats / f"{brats.name}_flair.nii.gz",
    )
    # the T1s on coarser grids over the same field of view
    coarse = np.diag([-2.0, -2.0, 3.0, 1.0])
    coarse[:2, 3] = 0.5  # voxel centres of a 2 mm grid over the 1 mm one
    for name, seed in (("t1", 2), ("t1ce", 3)):
        t1 = _head((5, 16, 16), seed)
        nib.save(nib.Nifti1Image(t1.transpose(2, 1, 0), coarse), brats / f"{brats.name}_{name}.nii.gz")
    dicom = root / "dicom" / "P7"
    files = write_dicom_series(
        dicom / "flair", _head((4, 32, 32), 4), description="AX FLAIR", series_number=1
    )
    write_dicom_series(dicom / "t1", _head((4, 32, 32), 5), description="AX T1", series_number=2)
    broken = root / "broken.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((32, 32, 4, 3), np.float32), np.eye(4)), broken)
    broken.write_bytes(broken.read_bytes()[:200])
    return files


def _run(tmp_path: Path, data: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    ckpt = tmp_path / "model.pt"
    if not ckpt.exists():
        torch.manual_seed(0)
        torch.save(UNet(n_filters=2, depth=3).state_dict(), ckpt)
    command = [
        sys.executable,
        "-m",
        "monai.bundle",
        "run",
        "--config_file",
        str(CONFIGS / "inference.json"),
        "--logging_file",
        str(CONFIGS / "logging.conf"),
        "--bundle_root",
        str(tmp_path),
        "--dataset_dir",
        str(data),
        "--ckpt_path",
        str(ckpt),
        "--output_dir",
        str(out),
        "--image_size",
        "32",
        "--network_def#n_filters",
        "2",
        "--network_def#depth",
        "3",
        "--threshold",
        "0.5",
        *extra,
    ]
    return subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, timeout=300)


def _outputs(out: Path) -> dict[str, float]:
    return {
        p.relative_to(out).as_posix(): p.stat().st_mtime_ns
        for p in out.rglob("*")
        if p.is_file() and p.name.endswith(("_mask.nii.gz", "_seg.dcm", "_mask.tif"))
    }


def test_every_layout_a_bad_input_and_a_resume_from_the_command_line(tmp_path):
    import highdicom as hd

    data, out = tmp_path / "in", tmp_path / "out"
    flair_files = _dataset(data)
    first = _run(tmp_path, data, out)
    log = first.stdout + first.stderr
    assert first.returncode != 0, log
    assert "broken.nii.gz" in log and "failures.csv" in log

    with open(out / "failures.csv", newline="") as handle:
        failures = list(csv.DictReader(handle))
    assert [row["input"] for row in failures] == ["broken.nii.gz"]
    with open(out / "lesion_volumes.csv", newline="") as handle:
        rows = {row["input"]: row for row in csv.DictReader(handle)}
    assert sorted(rows) == ["TCGA_AA_0001_20000101", "dicom/P7", "nifti/BraTS20_Training_001"]
    brats_row = rows["nifti/BraTS20_Training_001"]
    assert rows["dicom/P7"]["substituted"] == "t1c" and brats_row["substituted"] == ""
    brats_files = brats_row["input_files"].split(";")
    names = [f"BraTS20_Training_001_{s}.nii.gz" for s in ("t1", "flair", "t1ce")]
    assert [Path(f).name for f in brats_files] == names
    assert all(not Path(f).is_absolute() and (data / f).is_file() for f in brats_files)  # relative

    # masks in FLAIR's geometry: the BraTS patient's FLAIR grid, not its T1s' coarser one
    brats = nib.load(out / "nifti" / "BraTS20_Training_001_mask.nii.gz")
    flair = nib.load(data / "nifti" / "BraTS20_Training_001" / "BraTS20_Training_001_flair.nii.gz")
    assert brats.shape == flair.shape and np.allclose(brats.affine, flair.affine)
    volume_ml = np.asarray(brats.dataobj).sum() * 1.0 * 1.0 * 3.0 / 1000
    assert float(rows["nifti/BraTS20_Training_001"]["lesion_volume_ml"]) == pytest.approx(volume_ml, abs=1e-6)
    # the DICOM FLAIR's SEG holds the NIfTI mask, image by image of the FLAIR series
    seg = hd.seg.segread(out / "dicom" / "P7_seg.dcm")
    mask = np.asarray(nib.load(out / "dicom" / "P7_mask.nii.gz").dataobj).transpose(2, 1, 0)  # (k, j, i)
    assert int(rows["dicom/P7"]["lesion_voxels"]) == int(mask.sum())
    uids = [pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in flair_files]
    frames = seg.get_pixels_by_source_instance(source_sop_instance_uids=uids, segment_numbers=[1])
    np.testing.assert_array_equal(frames[..., 0], mask)
    assert (out / "report.html").read_text().count("research use only") >= 1

    kept = _outputs(out)
    assert len(kept) == 3 + 3 + 1  # three volume masks, three TIFF slice masks, one SEG
    again = _run(tmp_path, data, out, "--skip_existing", "true")
    assert again.returncode != 0  # the broken input is still broken
    assert _outputs(out) == kept  # nothing segmented again
    redo = _run(tmp_path, data, out, "--skip_existing", "false")
    assert redo.returncode != 0
    assert all(_outputs(out)[name] != mtime for name, mtime in kept.items())  # "false" is false
