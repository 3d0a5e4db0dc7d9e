"""A batch of inputs: a bad one is recorded and the run goes on; an interrupted run resumes."""

from __future__ import annotations

import csv
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import tifffile
import torch

from pipeline.inference.input_record import InferenceInput
from pipeline.inference.run_summary import InferenceFailed
from pipeline.inference.workflow import SliceDataset, find_inputs, segment_inputs, tiff_preprocessing

N_SLICES = 4


class CountingFlair(torch.nn.Module):
    """Lesion where FLAIR (channel 1) is bright; counts the slices seen; raises on forward pass
    number ``fail_at`` (1-based) as a crash or a kill in the middle of a run would."""

    def __init__(self, fail_at: int | None = None) -> None:
        super().__init__()
        self.slices, self.calls, self.fail_at = 0, 0, fail_at

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls == self.fail_at:
            raise RuntimeError("killed in the middle of the run")
        self.slices += x.shape[0]
        return (x[:, 1:2] - 0.5) * 50.0


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def write_volumes(data: Path, names: list[str]) -> dict[str, np.ndarray]:
    """3-channel NIfTI volumes (16 x 16 x N_SLICES), a lesion of its own size each; the truths (k, j, i)."""
    data.mkdir(parents=True, exist_ok=True)
    truths = {}
    for n, name in enumerate(names):
        truth = np.zeros((N_SLICES, 16, 16), bool)
        truth[1:3, 2 : 5 + n, 3:9] = True
        flair = np.where(truth, 900.0, 100.0).astype(np.float32)
        volume = np.stack([np.full_like(flair, 300.0), flair, np.full_like(flair, 200.0)], -1)
        nib.save(nib.Nifti1Image(volume.transpose(2, 1, 0, 3), np.diag([1.0, 1.0, 2.0, 1.0])), data / name)
        truths[name] = truth
    return truths


def mask_of(out: Path, name: str) -> np.ndarray:
    stem = name[: -len(".nii.gz")]
    return np.asarray(nib.load(out / f"{stem}_mask.nii.gz").dataobj).transpose(2, 1, 0)


def truncate(path: Path) -> None:
    content = path.read_bytes()
    path.write_bytes(content[: len(content) // 2])


def test_bad_inputs_are_recorded_and_the_run_goes_on(tmp_path):
    data, out = tmp_path / "in", tmp_path / "out"
    truths = write_volumes(data, ["a.nii.gz", "b.nii.gz", "c.nii.gz"])
    patient = data / "TCGA_DD_0004_20000104"
    patient.mkdir()
    for k in range(1, 4):
        tifffile.imwrite(patient / f"{patient.name}_{k}.tif", np.full((16, 16, 3), 40, np.uint8))
    inputs = find_inputs(data)  # headers read: all four look fine
    truncate(data / "b.nii.gz")  # then the volume is cut short before its slices are read
    truncate(patient / f"{patient.name}_2.tif")  # and one TIFF slice
    unusable = InferenceInput(
        "d/scan.nii.gz", "nifti", data / "d" / "scan.nii.gz", 0, error="d/scan.nii.gz: no FLAIR"
    )
    inputs.append(unusable)
    network = CountingFlair()

    with pytest.raises(InferenceFailed) as caught:
        segment_inputs(inputs, network, out, image_size=16, batch_size=3, dataset_dir=data)

    message = str(caught.value)
    for name in ("b.nii.gz", "d/scan.nii.gz", "TCGA_DD_0004_20000104"):
        assert name in message
    assert str(out / "failures.csv") in message
    assert sorted(caught.value.failures) == ["TCGA_DD_0004_20000104", "b.nii.gz", "d/scan.nii.gz"]
    # the unusable input has no slices; the others are all fed (the bad ones as placeholders)
    assert network.slices == 3 * N_SLICES + 3
    # the good inputs' outputs are all written, and exactly right
    for name in ("a.nii.gz", "c.nii.gz"):
        np.testing.assert_array_equal(mask_of(out, name), truths[name].astype(np.uint8))
    assert not (out / "b_mask.nii.gz").exists() and not (out / "TCGA_DD_0004_20000104_mask.nii.gz").exists()
    assert not (out / "TCGA_DD_0004_20000104").exists()  # no per-slice masks of a patient that failed
    assert [r["input"] for r in read_csv(out / "lesion_volumes.csv")] == ["a.nii.gz", "c.nii.gz"]
    assert (out / "report.html").is_file()
    failures = {r["input"]: r["error"] for r in read_csv(out / "failures.csv")}
    assert sorted(failures) == ["TCGA_DD_0004_20000104", "b.nii.gz", "d/scan.nii.gz"]
    assert str(data / "b.nii.gz") in failures["b.nii.gz"]
    assert f"{patient.name}_2.tif" in failures["TCGA_DD_0004_20000104"]
    assert failures["d/scan.nii.gz"] == "d/scan.nii.gz: no FLAIR"
    assert not list(out.rglob(".tmp-*"))


def test_the_dataset_gives_placeholders_for_a_volume_it_cannot_read(tmp_path):
    data = tmp_path / "in"
    write_volumes(data, ["a.nii.gz", "b.nii.gz"])
    inputs = find_inputs(data)
    truncate(data / "a.nii.gz")
    dataset = SliceDataset(inputs, tiff_preprocessing(16), skip={"b.nii.gz"})
    assert len(dataset) == N_SLICES  # b is skipped
    items = [dataset[k] for k in range(N_SLICES)]
    assert all(item["input"] == 0 and str(data / "a.nii.gz") in item["error"] for item in items)
    assert [item["slice"] for item in items] == list(range(N_SLICES))
    assert all(item["image"].shape == (3, 16, 16) and not item["image"].any() for item in items)


def test_an_interrupted_run_resumes_with_skip_existing(tmp_path):
    data, out = tmp_path / "in", tmp_path / "out"
    names = ["a.nii.gz", "b.nii.gz", "c.nii.gz"]
    truths = write_volumes(data, names)
    # one batch per input; the third forward pass (input c) dies: a and b are written, c not
    with pytest.raises(RuntimeError, match="killed in the middle"):
        segment_inputs(find_inputs(data), CountingFlair(fail_at=3), out, image_size=16, batch_size=N_SLICES)
    assert [p.name for p in sorted(out.glob("*_mask.nii.gz"))] == ["a_mask.nii.gz", "b_mask.nii.gz"]
    assert not (out / "lesion_volumes.csv").exists()
    written = {name: (out / name.replace(".nii.gz", "_mask.nii.gz")).stat().st_mtime_ns for name in names[:2]}

    network = CountingFlair()
    segment_inputs(find_inputs(data), network, out, image_size=16, batch_size=N_SLICES, skip_existing=True)

    assert network.slices == N_SLICES  # only c was segmented
    for name in names[:2]:
        assert (out / name.replace(".nii.gz", "_mask.nii.gz")).stat().st_mtime_ns == written[name]
    for name in names:
        np.testing.assert_array_equal(mask_of(out, name), truths[name].astype(np.uint8))
    rows = read_csv(out / "lesion_volumes.csv")
    assert [r["input"] for r in rows] == names
    # the kept rows recomputed from the masks on disk, by hand: 2 slices x (3 + n) rows x 6 columns
    assert [int(r["lesion_voxels"]) for r in rows] == [36, 48, 60]
    assert [float(r["lesion_volume_ml"]) for r in rows] == pytest.approx([0.072, 0.096, 0.12])
    sections = report_sections(out / "report.html")
    assert sections == {"a.nii.gz": ("kept", 1), "b.nii.gz": ("kept", 1), "c.nii.gz": ("segmented", 1)}

    # one output deleted: only that input is segmented again
    (out / "b_mask.nii.gz").unlink()
    before = {
        name: (out / name.replace(".nii.gz", "_mask.nii.gz")).stat().st_mtime_ns
        for name in ("a.nii.gz", "c.nii.gz")
    }
    network = CountingFlair()
    segment_inputs(find_inputs(data), network, out, image_size=16, batch_size=N_SLICES, skip_existing=True)
    assert network.slices == N_SLICES and (out / "b_mask.nii.gz").is_file()
    for name, mtime in before.items():
        assert (out / name.replace(".nii.gz", "_mask.nii.gz")).stat().st_mtime_ns == mtime
    assert read_csv(out / "lesion_volumes.csv") == rows

    # everything there: no forward pass at all, and the tables are still written
    (out / "lesion_volumes.csv").unlink()
    network = CountingFlair()
    segment_inputs(find_inputs(data), network, out, image_size=16, batch_size=N_SLICES, skip_existing=True)
    assert network.calls == 0 and read_csv(out / "lesion_volumes.csv") == rows


def test_a_fixed_input_clears_the_failures_of_the_run_before(tmp_path):
    data, out = tmp_path / "in", tmp_path / "out"
    write_volumes(data, ["a.nii.gz", "b.nii.gz"])
    inputs = find_inputs(data)
    good = (data / "b.nii.gz").read_bytes()
    truncate(data / "b.nii.gz")
    with pytest.raises(InferenceFailed, match="b.nii.gz"):
        segment_inputs(inputs, CountingFlair(), out, image_size=16)
    assert (out / "failures.csv").is_file()

    (data / "b.nii.gz").write_bytes(good)
    network = CountingFlair()
    segment_inputs(find_inputs(data), network, out, image_size=16, skip_existing=True)
    assert network.slices == N_SLICES  # only b
    assert not (out / "failures.csv").exists()
    assert [r["input"] for r in read_csv(out / "lesion_volumes.csv")] == ["a.nii.gz", "b.nii.gz"]


def report_sections(path: Path) -> dict[str, tuple[str, int]]:
    """input -> (status, images) of each section of report.html."""
    from html.parser import HTMLParser

    found: dict[str, list] = {}
    current: list[str] = []

    class Sections(HTMLParser):
        def handle_starttag(self, tag, attrs):
            attrs = dict(attrs)
            if tag == "section":
                current[:] = [attrs["data-input"]]
                found[attrs["data-input"]] = [attrs["data-status"], 0]
            elif tag == "img" and current:
                found[current[0]][1] += 1

    Sections().feed(path.read_text(encoding="utf-8"))
    return {name: (status, images) for name, (status, images) in found.items()}


def test_skip_existing_redoes_a_tiff_patient_missing_a_slice_mask_or_in_the_old_layout(tmp_path):
    data, out = tmp_path / "in", tmp_path / "out"
    patient = data / "TCGA_EE_0005_20000105"
    patient.mkdir(parents=True)
    for k in range(1, 4):
        image = np.full((16, 16, 3), 10, np.uint8)
        image[4:9, 2:12, 1] = 250
        tifffile.imwrite(patient / f"{patient.name}_{k}.tif", image)
    segment_inputs(find_inputs(data), CountingFlair(), out, image_size=16)
    volume = out / f"{patient.name}_mask.nii.gz"

    network = CountingFlair()
    segment_inputs(find_inputs(data), network, out, image_size=16, skip_existing=True)
    assert network.slices == 0

    (out / patient.name / f"{patient.name}_2_mask.tif").unlink()
    network = CountingFlair()
    segment_inputs(find_inputs(data), network, out, image_size=16, skip_existing=True)
    assert network.slices == 3 and (out / patient.name / f"{patient.name}_2_mask.tif").is_file()

    # a volume mask of the earlier layout (H, W, n), identity affine: segmented and written again
    old = np.asarray(nib.load(volume).dataobj).transpose(1, 0, 2)
    nib.save(nib.Nifti1Image(old, np.eye(4)), volume)
    network = CountingFlair()
    segment_inputs(find_inputs(data), network, out, image_size=16, skip_existing=True)
    assert network.slices == 3
    np.testing.assert_array_equal(nib.load(volume).affine, np.diag([-1.0, -1.0, 1.0, 1.0]))
