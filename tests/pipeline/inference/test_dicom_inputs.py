"""DICOM inputs: the series tests/dicom_support.py writes, read by ITK, pydicom and highdicom, and
the real MR files pydicom ships."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from tests.dicom_support import MR_IMAGE_STORAGE, write_dicom_series


def phantom_kji(shape=(6, 32, 24), high=4000, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, high, shape)


def test_written_series_reads_back_with_itk(tmp_path):
    import itk

    volume = phantom_kji()
    files = write_dicom_series(tmp_path / "s", volume, spacing=(0.5, 0.8, 2.5), origin=(1, 2, 3), bits=12)

    assert [p.name for p in files] == [f"IM{k:04d}" for k in range(6)]
    image = itk.imread(str(tmp_path / "s"))
    np.testing.assert_array_equal(itk.array_from_image(image), volume)
    np.testing.assert_allclose(tuple(image.GetSpacing()), (0.5, 0.8, 2.5))
    np.testing.assert_allclose(tuple(image.GetOrigin()), (1.0, 2.0, 3.0))
    np.testing.assert_allclose(np.asarray(image.GetDirection()), np.eye(3))


def test_written_series_orientation_and_positions_as_itk_reads_them(tmp_path):
    """A tilted series: ITK's direction columns are the two in-plane directions and their cross
    product, and voxel (i, j, k) lands where ImagePositionPatient + i sx row + j sy col says."""
    import itk

    c, s = np.cos(np.radians(15)), np.sin(np.radians(15))
    orientation = (1.0, 0.0, 0.0, 0.0, c, s)
    volume = phantom_kji((4, 16, 20), high=255)
    files = write_dicom_series(
        tmp_path / "s", volume, spacing=(0.7, 0.9, 3.0), origin=(-5, 10, 40), orientation=orientation, bits=8
    )
    image = itk.imread(str(tmp_path / "s"))
    np.testing.assert_array_equal(itk.array_from_image(image), volume)
    direction = np.asarray(image.GetDirection())
    np.testing.assert_allclose(direction[:, 0], [1, 0, 0], atol=1e-6)
    np.testing.assert_allclose(direction[:, 1], [0, c, s], atol=1e-6)
    np.testing.assert_allclose(direction[:, 2], [0, -s, c], atol=1e-6)
    header = pydicom.dcmread(files[3], stop_before_pixels=True)
    by_hand = np.array([float(v) for v in header.ImagePositionPatient]) + 2 * 0.7 * np.array([1, 0, 0])
    by_hand = by_hand + 5 * 0.9 * np.array([0, c, s])
    index = itk.Index[3]()
    index[0], index[1], index[2] = 2, 5, 3
    np.testing.assert_allclose(tuple(image.TransformIndexToPhysicalPoint(index)), by_hand, atol=1e-4)


def test_written_files_are_complete_mr_images(tmp_path):
    volume = phantom_kji((3, 8, 10), high=2**15, seed=2) - 2**14
    files = write_dicom_series(
        tmp_path / "s",
        volume,
        spacing=(0.5, 0.6, 4.0),
        origin=(0, 0, 0),
        bits=16,
        signed=True,
        description="AX T1 POST",
        series_number=7,
        patient_id="P7",
    )
    with open(files[0], "rb") as handle:
        assert handle.read(132)[128:] == b"DICM"
    for k, path in enumerate(files):
        ds = pydicom.dcmread(path)
        assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
        assert ds.SOPClassUID == MR_IMAGE_STORAGE == "1.2.840.10008.5.1.4.1.1.4"
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert (ds.Modality, ds.SeriesDescription) == ("MR", "AX T1 POST")
        assert (ds.SeriesNumber, ds.PatientID) == (7, "P7")
        assert ds.InstanceNumber == k + 1 and ds.PhotometricInterpretation == "MONOCHROME2"
        assert (ds.BitsAllocated, ds.BitsStored, ds.PixelRepresentation) == (16, 16, 1)
        assert [float(v) for v in ds.PixelSpacing] == [0.6, 0.5]  # row spacing first
        assert float(ds.SliceThickness) == float(ds.SpacingBetweenSlices) == 4.0
        assert [float(v) for v in ds.ImagePositionPatient] == [0.0, 0.0, 4.0 * k]
        np.testing.assert_array_equal(ds.pixel_array, volume[k])
    uids = {pydicom.dcmread(p).SOPInstanceUID for p in files}
    assert len(uids) == 3
    assert len({pydicom.dcmread(p).SeriesInstanceUID for p in files}) == 1


def test_highdicom_reads_the_series_and_segments_it(tmp_path):
    import highdicom as hd

    volume = phantom_kji()
    files = write_dicom_series(tmp_path / "s", volume, spacing=(0.5, 0.8, 2.5), origin=(1, 2, 3))
    sources = [pydicom.dcmread(p) for p in files]
    geometry = hd.get_volume_from_series(sources)
    assert geometry.shape == (6, 32, 24) and geometry.spacing == pytest.approx((2.5, 0.8, 0.5))
    # every voxel (k, j, i) of ours sits at origin + (i sx, j sy, k sz) (by hand); highdicom's
    # affine maps that point to the voxel of its array holding the same value
    k, j, i = np.indices(volume.shape).reshape(3, -1)
    world = np.stack([1 + 0.5 * i, 2 + 0.8 * j, 3 + 2.5 * k, np.ones_like(k, dtype=float)])
    index = np.rint(np.linalg.inv(geometry.affine) @ world).astype(int)[:3]
    np.testing.assert_array_equal(geometry.array[tuple(index)], volume[k, j, i])
    mask = np.zeros(volume.shape, bool)
    mask[2, 5:9, 3:7] = True
    segment = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label="lesion",
        segmented_property_category=hd.sr.CodedConcept("49755003", "SCT", "Morphologically Altered"),
        segmented_property_type=hd.sr.CodedConcept("52988006", "SCT", "Lesion"),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
    )
    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=mask,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[segment],
        series_instance_uid=hd.UID(),
        series_number=99,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="test",
        manufacturer_model_name="test",
        software_versions="0",
        device_serial_number="0",
    )
    assert seg.NumberOfFrames == 1  # the one slice holding the lesion
    assert seg.PatientID == "PHANTOM01" and seg.StudyInstanceUID == sources[0].StudyInstanceUID


@pytest.mark.parametrize("name", ["MR_small.dcm", "MR_small_implicit.dcm", "MR_small_bigendian.dcm"])
def test_itk_reads_the_mr_files_pydicom_ships_as_pydicom_does(tmp_path, name):
    import itk

    reference = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    image = itk.imread(get_testdata_file(name))
    np.testing.assert_array_equal(itk.array_from_image(image)[0], reference.pixel_array)
    spacing = [float(v) for v in reference.PixelSpacing]
    np.testing.assert_allclose(tuple(image.GetSpacing())[:2], spacing[::-1])
    np.testing.assert_allclose(tuple(image.GetOrigin()), [float(v) for v in reference.ImagePositionPatient])
