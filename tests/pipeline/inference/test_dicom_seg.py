"""DICOM Segmentations of inference, read back with highdicom, against the NIfTI mask and the truth."""

from __future__ import annotations

import os
from pathlib import Path

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch

from pipeline.inference.dicom_seg import write_seg
from pipeline.inference.workflow import find_inputs, segment_inputs
from tests.dicom_support import slice_normal, write_dicom_series

MODEL = {
    "bundle_name": "LGG FLAIR abnormality segmentation",
    "bundle_version": "0.1.0",
    "weights_sha256": "ab" * 32,
}


class BrightFlair(torch.nn.Module):
    """A network stand-in: a large positive logit where the FLAIR channel (1) is bright; counts slices."""

    def __init__(self) -> None:
        super().__init__()
        self.slices = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.slices += x.shape[0]
        return (x[:, 1:2] - 0.5) * 50.0


def lesion_kji(n: int = 5, rows: int = 20, columns: int = 28) -> np.ndarray:
    """A lesion that differs per slice, asymmetric in rows and columns; slice 3 empty."""
    truth = np.zeros((n, rows, columns), bool)
    for k in range(n):
        if k != 3:
            truth[k, 2 + k : 7 + 2 * k, 1 + 3 * k : 22 - k] = True
    return truth


def write_series(folder: Path, volume: np.ndarray, **geometry) -> list[Path]:
    """A series whose files are renamed so that name order is the reverse of slice order (a
    writer that sorted by name would mismatch frames and images); the files in slice order."""
    files = write_dicom_series(folder, volume, spacing=(0.7, 0.8, 2.5), bits=12, **geometry)
    renamed = []
    for k, path in enumerate(files):
        target = path.with_name(f"X{len(files) - 1 - k:03d}")
        path.rename(target)
        renamed.append(target)
    return renamed


def write_patient(folder: Path, truth: np.ndarray) -> list[Path]:
    """A DICOM patient of three series (FLAIR 900 on the lesion, 100 elsewhere; the T1s dark
    there); FLAIR's files in slice order."""
    geometry = {
        "study_uid": "1.2.826.0.1.3680043.8.498.7",
        "frame_of_reference_uid": "1.2.826.0.1.3680043.8.498.8",
    }
    flair = np.where(truth, 900, 100)
    files = write_series(folder / "flair", flair, description="AX FLAIR", **geometry)
    write_series(folder / "t1", 1000 - flair, description="AX T1", **geometry)
    write_series(folder / "t1_post", 1000 - flair, description="AX T1 +C", **geometry)
    return files


def segment_patient(data: Path, out: Path, flair_files: list[Path], **options) -> tuple[BrightFlair, Path]:
    [inp] = find_inputs(data, allow_flair_only=True)
    assert inp.kind in ("dicom", "patient") and not inp.error
    assert list(inp.dicom_files) == flair_files  # FLAIR's files in slice order, whatever their names
    network = BrightFlair()
    segment_inputs([inp], network, out, image_size=32, model_info=MODEL, dataset_dir=data, **options)
    return network, out / f"{inp.name}_seg.dcm"


def by_position(files: list[Path]) -> list[str]:
    """SOPInstanceUIDs sorted by position along the slice normal: slice order, computed here."""
    datasets = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
    normal = slice_normal([float(v) for v in datasets[0].ImageOrientationPatient])
    datasets.sort(key=lambda d: float(np.dot([float(v) for v in d.ImagePositionPatient], normal)))
    return [d.SOPInstanceUID for d in datasets]


def test_seg_round_trip_equals_the_nifti_mask_voxel_for_voxel(tmp_path):
    data, out = tmp_path / "in", tmp_path / "out"
    truth = lesion_kji()
    files = write_patient(data / "patient7", truth)

    _, seg_path = segment_patient(data, out, files)

    assert seg_path == out / "patient7_seg.dcm"
    nifti = np.asarray(nib.load(out / "patient7_mask.nii.gz").dataobj).transpose(2, 1, 0)  # (k, j, i)
    # 20 x 28 slices resized to 32 x 32 and back may move an edge by a pixel, a flip moves a lot
    assert nifti.shape == truth.shape and np.mean(nifti == truth) > 0.98
    assert (nifti[truth]).mean() > 0.9 and (nifti[~truth]).mean() < 0.02 and not nifti[3].any()
    seg = hd.seg.segread(seg_path)
    uids = by_position(files)
    frames = seg.get_pixels_by_source_instance(source_sop_instance_uids=uids, segment_numbers=[1])
    assert frames.shape == (*truth.shape, 1)
    np.testing.assert_array_equal(frames[..., 0], nifti)
    # the empty slice 3 has no frame (omitted), the others one each
    assert seg.NumberOfFrames == 4
    source = pydicom.dcmread(files[0], stop_before_pixels=True)
    assert seg.SegmentationType == "BINARY"
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == source.SeriesInstanceUID
    referenced = {
        item.ReferencedSOPInstanceUID for item in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence
    }
    assert referenced == set(uids)
    assert (seg.StudyInstanceUID, seg.PatientID, seg.FrameOfReferenceUID) == (
        source.StudyInstanceUID,
        source.PatientID,
        source.FrameOfReferenceUID,
    )


def test_seg_segment_is_coded_as_an_automatic_flair_abnormality(tmp_path):
    data, out = tmp_path / "in", tmp_path / "out"
    files = write_patient(data / "P", lesion_kji())

    _, seg_path = segment_patient(data, out, files, threshold=0.6, largest_component=True)

    seg = pydicom.dcmread(seg_path)
    [segment] = seg.SegmentSequence
    assert segment.SegmentNumber == 1 and segment.SegmentLabel == "FLAIR abnormality"
    category, kind = (
        segment.SegmentedPropertyCategoryCodeSequence[0],
        segment.SegmentedPropertyTypeCodeSequence[0],
    )
    assert (category.CodeValue, category.CodingSchemeDesignator) == ("49755003", "SCT")
    assert (kind.CodeValue, kind.CodingSchemeDesignator, kind.CodeMeaning) == ("52988006", "SCT", "Lesion")
    assert segment.SegmentAlgorithmType == "AUTOMATIC"
    [algorithm] = segment.SegmentationAlgorithmIdentificationSequence
    assert algorithm.AlgorithmName == "LGG FLAIR abnormality segmentation"
    assert algorithm.AlgorithmVersion == "0.1.0"
    assert algorithm.AlgorithmFamilyCodeSequence[0].CodeValue == "123110"  # Artificial Intelligence
    parameters = algorithm.AlgorithmParameters
    assert "weights_sha256=" + "ab" * 32 in parameters and "threshold=0.6" in parameters
    assert "largest_component=True" in parameters and "training_run_id=unknown" in parameters
    assert seg.DeviceSerialNumber == "ab" * 32 and "research use only" in seg.SeriesDescription
    assert seg.Modality == "SEG"


def test_an_empty_mask_gives_a_seg_of_empty_frames(tmp_path):
    data, out = tmp_path / "in", tmp_path / "out"
    files = write_series(data / "s", np.full((3, 12, 10), 100))  # one series: FLAIR alone, allowed

    _, seg_path = segment_patient(data, out, files)
    assert seg_path == out / "s_seg.dcm"

    seg = hd.seg.segread(seg_path)
    frames = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=by_position(files), segment_numbers=[1]
    )
    assert frames.shape == (3, 12, 10, 1) and not frames.any()


def test_skip_existing_redoes_an_input_whose_seg_is_missing(tmp_path):
    data, out = tmp_path / "in", tmp_path / "out"
    files = write_patient(data / "P", lesion_kji())
    _, seg_path = segment_patient(data, out, files)
    mask_path = out / "P_mask.nii.gz"

    network, _ = segment_patient(data, out, files, skip_existing=True)
    assert network.slices == 0  # mask and SEG exist: nothing segmented

    seg_path.unlink()
    before = mask_path.stat().st_mtime_ns
    network, _ = segment_patient(data, out, files, skip_existing=True)
    assert network.slices == 5 and seg_path.is_file()
    assert mask_path.stat().st_mtime_ns != before
    frames = hd.seg.segread(seg_path).get_pixels_by_source_instance(
        source_sop_instance_uids=by_position(files), segment_numbers=[1]
    )
    np.testing.assert_array_equal(frames[..., 0], np.asarray(nib.load(mask_path).dataobj).transpose(2, 1, 0))


def test_seg_of_another_series_size_is_refused_naming_the_folder(tmp_path):
    files = write_dicom_series(tmp_path / "series", np.zeros((2, 8, 6), np.uint16))
    with pytest.raises(
        ValueError, match=f"DICOM series {tmp_path / 'series'}: 2 files for a mask of 3 slices"
    ):
        write_seg(tmp_path / "seg.dcm", np.zeros((3, 8, 6)), files)
    with pytest.raises(ValueError, match=f"{os.fspath(files[0])}: 8 x 6 pixels, the mask 8 x 7"):
        write_seg(tmp_path / "seg.dcm", np.zeros((2, 8, 7)), files)
    assert not (tmp_path / "seg.dcm").exists()


def test_no_seg_for_inputs_that_are_not_dicom(tmp_path):
    data, out = tmp_path / "in", tmp_path / "out"
    data.mkdir()
    nib.save(nib.Nifti1Image(np.full((8, 8, 2, 3), 5.0, np.float32), np.eye(4)), data / "v.nii.gz")
    segment_inputs(find_inputs(data), BrightFlair(), out, image_size=8)
    assert (out / "v_mask.nii.gz").is_file()
    assert not list(out.rglob("*.dcm"))
