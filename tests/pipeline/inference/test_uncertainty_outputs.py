"""Inference with ``uncertainty``: the map beside each mask, the scores and flag in the CSV and report."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import tifffile
import torch
from monai.bundle import ConfigParser
from monai.transforms import Activationsd

from networks import UNet
from pipeline.inference.lesion_stats import CSV_COLUMNS, UNCERTAINTY_COLUMNS
from pipeline.inference.mask_files import TIFF_AFFINE
from pipeline.inference.tta import FlipTTA
from pipeline.inference.uncertainty import MaskSigmoidd, UncertaintyInferer, mask_writer
from pipeline.inference.workflow import MaskWriter, find_inputs, run_inference

INFERENCE_JSON = Path(__file__).resolve().parents[3] / "bundle" / "configs" / "inference.json"


class BrightFlair(torch.nn.Module):
    """Pointwise: commutes with the flip, so the flip samples agree exactly."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x[:, 1:2] - 0.5) * 50.0


class LeaningRight(torch.nn.Module):
    """Bright FLAIR plus a ramp over the columns: the flipped sample disagrees near the lesion edges."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x[:, 1:2] - 0.5) * 6.0 + torch.linspace(-6.0, 6.0, x.shape[-1])


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def write_nifti(path: Path, n: int = 4, shape_ij: tuple[int, int] = (32, 24)) -> np.ndarray:
    """A 3-channel NIfTI whose FLAIR is bright in a block, its affine (LPS, 0.9 x 0.8 x 3 mm)."""
    flair = np.full((*shape_ij, n), 100.0, np.float32)
    flair[4:20, 6:15, :] = 900.0
    affine = np.array([[-0.9, 0.0, 0.0, 100.0], [0.0, -0.8, 0.0, -20.0], [0.0, 0.0, 3.0, 5.0], [0, 0, 0, 1]])
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.stack([flair] * 3, axis=-1), affine), path)
    return affine


def test_map_has_the_mask_geometry_and_is_zero_when_the_samples_agree(tmp_path):
    data, out = tmp_path / "in", tmp_path / "out"
    affine = write_nifti(data / "sub" / "brain.nii.gz")

    csv_path = run_inference(data, BrightFlair(), out, image_size=32, uncertainty="tta")

    mask = nib.load(out / "sub" / "brain_mask.nii.gz")
    uncertainty = nib.load(out / "sub" / "brain_uncertainty.nii.gz")
    assert uncertainty.shape == mask.shape == (32, 24, 4)
    np.testing.assert_allclose(uncertainty.affine, affine)
    np.testing.assert_allclose(uncertainty.affine, mask.affine)
    assert uncertainty.get_data_dtype() == np.float32
    assert np.count_nonzero(np.asarray(uncertainty.dataobj)) == 0
    [row] = read_csv(csv_path)
    assert list(row) == [*CSV_COLUMNS[:-1], *UNCERTAINTY_COLUMNS, "input_files"]
    assert float(row["uncertainty_disagreement"]) == 0.0 and row["uncertainty_flag"] == "false"
    assert int(row["lesion_voxels"]) > 0
    record = json.loads((out / "sub" / "brain_uncertainty.json").read_text())
    assert record["method"] == "tta" and record["samples"] == 2
    assert record["map"] == "brain_uncertainty.nii.gz" and record["disagreement"] == 0.0


def test_disagreeing_samples_are_scored_and_flagged_in_csv_and_report(tmp_path):
    data = tmp_path / "in"
    write_nifti(data / "scan.nii.gz")

    low = run_inference(
        data, LeaningRight(), tmp_path / "low", image_size=32, uncertainty="tta", uncertainty_threshold=0.01
    )
    high = run_inference(
        data, LeaningRight(), tmp_path / "high", image_size=32, uncertainty="tta", uncertainty_threshold=0.9
    )

    variance = np.asarray(nib.load(tmp_path / "low" / "scan_uncertainty.nii.gz").dataobj)
    assert 0 < variance.max() <= 0.25
    [flagged], [kept] = read_csv(low), read_csv(high)
    assert float(flagged["uncertainty_disagreement"]) > 0.01 and flagged["uncertainty_flag"] == "true"
    assert kept["uncertainty_flag"] == "false"
    assert flagged["uncertainty_disagreement"] == kept["uncertainty_disagreement"]
    assert float(flagged["uncertainty_entropy"]) > 0
    page = (tmp_path / "low" / "report.html").read_text()
    assert 'data-uncertain="true"' in page and "uncertain: disagreement" in page
    assert "scan_uncertainty.nii.gz" in page
    assert 'data-uncertain="false"' in (tmp_path / "high" / "report.html").read_text()


def test_tiff_and_itk_maps_have_their_masks_geometry(tmp_path):
    import itk

    data, out = tmp_path / "in", tmp_path / "out"
    patient = data / "TCGA_AA_0001_20000101"
    patient.mkdir(parents=True)
    for k in range(1, 4):
        image = np.full((32, 48, 3), 10, np.uint8)
        image[5:12, 4:20, 1] = 250
        tifffile.imwrite(patient / f"{patient.name}_{k}.tif", image)
    flair = np.full((3, 32, 32), 100, np.int16)
    flair[:, 4:12, 5:20] = 900
    image = itk.image_from_array(np.ascontiguousarray(np.stack([flair] * 3, -1)), is_vector=True)
    image.SetSpacing([0.5, 0.8, 2.5])
    image.SetOrigin([1.0, 2.0, 3.0])
    itk.imwrite(image, str(data / "scan.nrrd"))

    run_inference(data, LeaningRight(), out, image_size=32, uncertainty="tta")

    mask = nib.load(out / f"{patient.name}_mask.nii.gz")
    tiff_map = nib.load(out / f"{patient.name}_uncertainty.nii.gz")
    assert tiff_map.shape == mask.shape == (48, 32, 3)
    np.testing.assert_array_equal(tiff_map.affine, TIFF_AFFINE)
    itk_mask, itk_map = (
        itk.imread(str(out / "scan_mask.nrrd")),
        itk.imread(str(out / "scan_uncertainty.nrrd")),
    )
    assert itk.array_from_image(itk_map).shape == itk.array_from_image(itk_mask).shape == (3, 32, 32)
    assert itk.array_from_image(itk_map).dtype == np.float32
    for getter in ("GetSpacing", "GetOrigin"):
        np.testing.assert_allclose(tuple(getattr(itk_map, getter)()), tuple(getattr(itk_mask, getter)()))
    np.testing.assert_allclose(
        itk.array_from_matrix(itk_map.GetDirection()), itk.array_from_matrix(itk_mask.GetDirection())
    )


def test_without_uncertainty_nothing_changes(tmp_path):
    data, out = tmp_path / "in", tmp_path / "out"
    write_nifti(data / "scan.nii.gz")
    assert (
        type(mask_writer(find_inputs(data), out, uncertainty=None, uncertainty_threshold=0.3)) is MaskWriter
    )

    csv_path = run_inference(data, BrightFlair(), out, image_size=32)

    assert list(read_csv(csv_path)[0]) == list(CSV_COLUMNS)
    assert not list(out.glob("*_uncertainty*"))
    assert "data-uncertain" not in (out / "report.html").read_text()


def test_skip_existing_keeps_only_inputs_with_their_uncertainty_map(tmp_path):
    data, out = tmp_path / "in", tmp_path / "out"
    write_nifti(data / "scan.nii.gz")
    run_inference(data, LeaningRight(), out, image_size=32)  # no map yet
    assert not (out / "scan_uncertainty.nii.gz").exists()

    first = read_csv(
        run_inference(data, LeaningRight(), out, image_size=32, skip_existing=True, uncertainty="tta")
    )
    assert (out / "scan_uncertainty.nii.gz").is_file()  # segmented again for its map

    (out / "scan_uncertainty.nii.gz").touch()  # a kept input is not written again: its mtime stays
    stamp = (out / "scan_uncertainty.nii.gz").stat().st_mtime_ns
    again = read_csv(
        run_inference(
            data,
            LeaningRight(),
            out,
            image_size=32,
            skip_existing=True,
            uncertainty="tta",
            uncertainty_threshold=0.0,
        )
    )
    assert (out / "scan_uncertainty.nii.gz").stat().st_mtime_ns == stamp
    assert again[0]["uncertainty_disagreement"] == first[0]["uncertainty_disagreement"]
    assert again[0]["uncertainty_flag"] == "true"  # decided again with the new threshold


def test_mc_dropout_inference_samples_and_restores_the_network(tmp_path):
    data, out = tmp_path / "in", tmp_path / "out"
    write_nifti(data / "scan.nii.gz")
    torch.manual_seed(0)
    network = UNet(n_filters=2, depth=3, dropout=0.5).eval()

    run_inference(data, network, out, image_size=32, uncertainty="mc_dropout", mc_samples=4)

    assert np.asarray(nib.load(out / "scan_uncertainty.nii.gz").dataobj).max() > 0
    assert not any(module.training for module in network.modules())
    assert json.loads((out / "scan_uncertainty.json").read_text())["samples"] == 4
    with pytest.raises(ValueError, match="needs a network with dropout"):
        run_inference(
            data,
            UNet(n_filters=2, depth=3, dropout=0.0),
            tmp_path / "none",
            image_size=32,
            uncertainty="mc_dropout",
        )


def test_inference_json_wires_uncertainty_only_when_set():
    def parsed(uncertainty):
        parser = ConfigParser()
        parser.read_config(str(INFERENCE_JSON))
        parser["uncertainty"] = uncertainty
        return parser.get_parsed_content("inferer"), parser.get_parsed_content("postprocessing")

    inferer, post = parsed(None)
    assert type(inferer) is FlipTTA and type(post) is Activationsd
    inferer, post = parsed("tta")
    assert isinstance(inferer, UncertaintyInferer) and isinstance(post, MaskSigmoidd)
    probabilities = post({"pred": torch.tensor([[[0.0]], [[0.2]], [[0.3]], [[1.0]]])})["pred"]
    torch.testing.assert_close(probabilities.flatten(), torch.tensor([0.5, 0.2, 0.3, 1.0]))


def test_ensemble_members_are_the_samples(tmp_path):
    from pipeline.inference.ensemble import FoldEnsemble

    data = tmp_path / "in"
    write_nifti(data / "scan.nii.gz")
    same = FoldEnsemble([LeaningRight(), LeaningRight()])
    other = FoldEnsemble([LeaningRight(), BrightFlair()])

    run_inference(data, same, tmp_path / "same", image_size=32, uncertainty="ensemble")
    run_inference(data, other, tmp_path / "other", image_size=32, uncertainty="ensemble")

    assert np.count_nonzero(np.asarray(nib.load(tmp_path / "same" / "scan_uncertainty.nii.gz").dataobj)) == 0
    assert np.asarray(nib.load(tmp_path / "other" / "scan_uncertainty.nii.gz").dataobj).max() > 0
    assert json.loads((tmp_path / "other" / "scan_uncertainty.json").read_text())["samples"] == 2
    with pytest.raises(ValueError, match="fold ensemble"):
        run_inference(data, LeaningRight(), tmp_path / "single", image_size=32, uncertainty="ensemble")
