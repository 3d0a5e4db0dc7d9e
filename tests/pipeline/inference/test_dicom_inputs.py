"""DICOM inputs: the series tests/dicom_support.py writes, read by ITK, pydicom and highdicom, and
the real MR files pydicom ships."""

from __future__ import annotations

import shutil

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from pipeline.inference.inputs import find_inputs
from pipeline.inference.intensity import window_to_8bit
from pipeline.inference.volumes import read_volume
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


def shuffled_series(folder, volume, **options):
    """A series whose file names and InstanceNumbers disagree with its slice order."""
    n = len(volume)
    order = [(3 * k + 1) % n for k in range(n)]  # a permutation for n = 5
    return write_dicom_series(folder, volume, name_pattern="F{k}", instance_order=order, **options)


def test_headers_give_itks_slice_order_and_geometry(tmp_path):
    import itk

    c, s = np.cos(np.radians(12)), np.sin(np.radians(12))
    volume = phantom_kji((5, 16, 20), high=255, seed=4)
    files = shuffled_series(tmp_path / "s", volume, spacing=(0.7, 0.9, 3.0), origin=(5, -7, 20),
                            orientation=(1.0, 0.0, 0.0, 0.0, c, -s), bits=8)  # fmt: skip
    (tmp_path / "s" / "F2").rename(tmp_path / "s" / "Z9")  # the sorted listing is not the slice order
    files[2] = tmp_path / "s" / "Z9"

    [inp] = find_inputs(tmp_path, allow_flair_only=True)

    names = itk.GDCMSeriesFileNames.New(Directory=str(tmp_path / "s"))
    ordered = list(names.GetFileNames(names.GetSeriesUIDs()[0]))
    assert [str(p) for p in inp.dicom_files] == ordered == [str(p) for p in files]
    image = itk.imread(str(tmp_path / "s"))
    np.testing.assert_allclose(inp.geometry["origin"], tuple(image.GetOrigin()), atol=1e-4)
    np.testing.assert_allclose(inp.geometry["spacing"], tuple(image.GetSpacing()), atol=1e-4)
    np.testing.assert_allclose(inp.geometry["direction"], np.asarray(image.GetDirection()), atol=1e-6)
    assert inp.spacing == pytest.approx((0.7, 0.9, 3.0), rel=1e-5)  # positions have 6 digits
    slices = read_volume(inp)  # 8-bit: read as stored
    np.testing.assert_array_equal(slices[:, 1], itk.array_from_image(image))
    np.testing.assert_array_equal(slices[:, 1], volume)


def test_slices_written_top_down_are_ordered_along_the_normal(tmp_path):
    """Slice k = ascending position along the normal, whatever order the files were written in."""
    volume = phantom_kji((4, 8, 8), high=255, seed=5)
    # the slice normal of IOP (1,0,0, 0,-1,0) is -z: positions fall as k grows, still ascending along it
    files = write_dicom_series(
        tmp_path / "s", volume, orientation=(1, 0, 0, 0, -1, 0), bits=8, origin=(0, 0, 0)
    )
    [inp] = find_inputs(tmp_path, allow_flair_only=True)
    assert list(inp.dicom_files) == files
    np.testing.assert_allclose(inp.geometry["direction"][:, 2], [0, 0, -1])
    np.testing.assert_array_equal(read_volume(inp)[:, 1], volume)


@pytest.mark.parametrize(
    "name", ["MR_small.dcm", "MR_small_implicit.dcm", "MR_small_bigendian.dcm", "MR_small_RLE.dcm",
             "MR_small_jpeg_ls_lossless.dcm", "MR_small_jp2klossless.dcm"],
)  # fmt: skip
def test_the_mr_files_pydicom_ships_as_inputs(tmp_path, name):
    reference = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    (tmp_path / "mr").mkdir()
    shutil.copy(get_testdata_file(name), tmp_path / "mr" / name)

    [inp] = find_inputs(tmp_path, allow_flair_only=True)

    assert (inp.kind, inp.n_slices, inp.error, inp.flair_only) == ("dicom", 1, "", True)
    assert inp.spacing == pytest.approx((0.3125, 0.3125, 0.8))  # one slice: SliceThickness
    np.testing.assert_allclose(inp.geometry["origin"], [float(v) for v in reference.ImagePositionPatient])
    slices = read_volume(inp)
    assert slices.shape == (1, 3, 64, 64)
    # decoded by ITK (compressed or not) as pydicom decodes the uncompressed file; 16-bit: windowed
    np.testing.assert_allclose(slices[0, 1], window_to_8bit(reference.pixel_array), atol=1e-3)


def series_error(tmp_path) -> str:
    [inp] = find_inputs(tmp_path, allow_flair_only=True)
    assert inp.n_slices == 0
    return inp.error


def test_a_multi_frame_file_is_refused_naming_it(tmp_path):
    [path] = write_dicom_series(tmp_path / "s", phantom_kji((1, 8, 8)))
    ds = pydicom.dcmread(path)
    ds.NumberOfFrames = 2
    ds.PixelData = ds.PixelData * 2
    ds.save_as(path, enforce_file_format=True)
    assert f"{path} is a multi-frame DICOM (2 frames" in series_error(tmp_path)


def test_two_acquisitions_sharing_a_series_uid_are_refused(tmp_path):
    volume = phantom_kji((3, 8, 8))
    write_dicom_series(tmp_path / "s", volume, series_uid="1.2.3.4.5", name_pattern="A{k}")
    write_dicom_series(tmp_path / "s", volume, series_uid="1.2.3.4.5", name_pattern="B{k}")
    error = series_error(tmp_path)
    assert f"DICOM series 'AX FLAIR' in {tmp_path / 's'} has two slices at one position" in error
    (tmp_path / "s" / "B0").unlink()
    (tmp_path / "s" / "B1").unlink()
    (tmp_path / "s" / "B2").unlink()
    write_dicom_series(tmp_path / "s", volume, series_uid="1.2.3.4.5", name_pattern="B{k}",
                       orientation=(0, 1, 0, 0, 0, -1))  # fmt: skip
    assert "mixes 2 orientations" in series_error(tmp_path)


def test_a_missing_slice_or_position_is_refused(tmp_path):
    files = write_dicom_series(tmp_path / "s", phantom_kji((6, 8, 8)))
    files[3].unlink()
    error = series_error(tmp_path)
    assert "slice gaps are not uniform (2.5 to 5 mm): a slice is missing" in error
    ds = pydicom.dcmread(files[0])
    del ds.ImagePositionPatient
    ds.save_as(files[0], enforce_file_format=True)
    assert f"{files[0]} lacks ImagePositionPatient" in series_error(tmp_path)


def test_non_image_dicom_files_are_ignored(tmp_path):
    volume = phantom_kji((3, 8, 8), high=255)
    write_dicom_series(tmp_path / "s", volume, bits=8)
    report = pydicom.dcmread(write_dicom_series(tmp_path / "tmp", volume[:1])[0])
    for keyword in ("PixelData", "Rows", "Columns"):
        delattr(report, keyword)
    report.SOPClassUID = report.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"
    report.save_as(tmp_path / "s" / "SR0001", enforce_file_format=True)
    shutil.rmtree(tmp_path / "tmp")
    [inp] = find_inputs(tmp_path, allow_flair_only=True)
    assert (inp.n_slices, inp.error, len(inp.dicom_files)) == (3, "", 3)
