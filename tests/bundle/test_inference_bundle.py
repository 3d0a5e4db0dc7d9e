"""bundle/configs/inference.json: the MONAI bundle workflow, and its agreement with train.json."""

from __future__ import annotations

import csv
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import tifffile
import torch
from monai.bundle import ConfigParser, ConfigWorkflow

from networks import UNet
from pipeline.inference.workflow import tiff_preprocessing

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "bundle" / "configs"


def parser_of(name: str, **overrides) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config(CONFIGS / name)
    parser.update(overrides)
    return parser


def write_slice(path: Path, seed: int = 0, shape=(40, 48)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    tifffile.imwrite(path, rng.integers(0, 255, (*shape, 3), dtype=np.uint8))


def test_tiff_preprocessing_is_the_training_one(tmp_path):
    train, infer = parser_of("train.json"), parser_of("inference.json")
    assert infer["network_def"] == train["network_def"]
    assert infer["image_size"] == train["image_size"]

    # the same numbers, from the configs, the Python entry point, and the volume-slice path
    image = tmp_path / "TCGA_AA_0001_20000101" / "TCGA_AA_0001_20000101_1.tif"
    write_slice(image)
    mask = image.with_name("TCGA_AA_0001_20000101_1_mask.tif")
    tifffile.imwrite(mask, np.zeros((40, 48), np.uint8))
    train, infer = parser_of("train.json", image_size=32), parser_of("inference.json", image_size=32)
    expected = train.get_parsed_content("validate#preprocessing")({"image": str(image), "label": str(mask)})[
        "image"
    ]
    assert tuple(expected.shape) == (3, 32, 32)
    # independently: min-max over the slice, then area resize (= mean over 40/32 x 48/32 cells)
    raw = np.moveaxis(tifffile.imread(image), -1, 0).astype(np.float32)
    scaled = (raw - raw.min()) / (raw.max() - raw.min())
    area = torch.nn.functional.adaptive_avg_pool2d(torch.from_numpy(scaled)[None], (32, 32))[0]
    torch.testing.assert_close(expected, area, rtol=0, atol=1e-5)
    from_config = infer.get_parsed_content("preprocessing")({"image": str(image)})["image"]
    from_python = tiff_preprocessing(32)({"image": str(image)})["image"]
    from_slice = infer.get_parsed_content("slice_preprocessing")({"image": raw})["image"]
    for result in (from_config, from_python, from_slice):
        assert type(result) is torch.Tensor and result.dtype == torch.float32
        torch.testing.assert_close(result, expected, rtol=0, atol=1e-6)


def test_the_preprocessing_is_defined_once_in_train_json(tmp_path):
    """A change to train.json's chain reaches inference.json, Python inference and the export."""
    import json

    from pipeline.inference.preprocessing import standalone_transforms

    config = json.loads((CONFIGS / "train.json").read_text())
    (scale,) = [t for t in config["deterministic_transforms"] if t["_target_"] == "ScaleIntensityd"]
    scale["maxv"] = 2.0
    changed = tmp_path / "train.json"
    changed.write_text(json.dumps(config))
    image = tmp_path / "p" / "p_1.tif"
    write_slice(image)
    infer = parser_of("inference.json", image_size=32, training_config=str(changed))
    out = infer.get_parsed_content("preprocessing")({"image": str(image)})["image"]
    assert float(out.max()) == pytest.approx(2.0, abs=0.05) and float(out.min()) >= 0.0
    default = parser_of("inference.json", image_size=32).get_parsed_content("preprocessing")
    torch.testing.assert_close(out, 2.0 * default({"image": str(image)})["image"], rtol=0, atol=1e-5)
    exported = [t for t in standalone_transforms(changed) if t["_target_"] == "ScaleIntensityd"]
    assert exported == [{"_target_": "ScaleIntensityd", "keys": ["image"], "minv": 0.0, "maxv": 2.0}]
    # the exported chain: no mask, MONAI's PIL reader, the geometry copy resized bilinear
    chain = standalone_transforms()
    assert all("label" not in t["keys"] and not t["_target_"].startswith("transforms.") for t in chain)
    assert chain[0]["reader"] == "PILReader" and chain[0]["reverse_indexing"] is False
    (resize,) = [t for t in chain if t["_target_"] == "Resized"]
    assert resize["keys"] == ["image", "geometry"] and resize["mode"] == ["area", "bilinear"]


def test_bundle_workflow_infers_tiff_and_nifti(tmp_path):
    data, out = tmp_path / "in", tmp_path / "out"
    for patient, n in (("TCGA_AA_0001_20000101", 2), ("TCGA_BB_0002_20000102", 3)):
        for k in range(1, n + 1):
            write_slice(data / patient / f"{patient}_{k}.tif", seed=k, shape=(32, 32))
    affine = np.diag([0.9, 0.9, 3.0, 1.0])
    rng = np.random.default_rng(3)
    nib.save(nib.Nifti1Image(rng.random((32, 24, 4), dtype=np.float32), affine), data / "scan.nii.gz")
    torch.manual_seed(0)
    ckpt = tmp_path / "model.pt"
    torch.save(UNet(n_filters=2, depth=3).state_dict(), ckpt)

    workflow = ConfigWorkflow(
        config_file=str(CONFIGS / "inference.json"),
        meta_file=str(CONFIGS / "metadata.json"),
        logging_file=False,
        workflow_type="infer",
        bundle_root=str(tmp_path),
        dataset_dir=str(data),
        ckpt_path=str(ckpt),
        output_dir=str(out),
        image_size=32,
        **{"network_def#n_filters": 2, "network_def#depth": 3},
    )
    workflow.initialize()
    assert workflow.check_properties() == []
    workflow.run()
    workflow.finalize()

    assert sorted(p.name for p in (out / "TCGA_BB_0002_20000102").iterdir()) == [
        f"TCGA_BB_0002_20000102_{k}_mask.tif" for k in (1, 2, 3)
    ]
    assert nib.load(out / "TCGA_AA_0001_20000101_mask.nii.gz").shape == (32, 32, 2)
    result = nib.load(out / "scan_mask.nii.gz")
    assert result.shape == (32, 24, 4)
    np.testing.assert_allclose(result.affine, affine)
    with open(out / "lesion_volumes.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["input"], r["n_slices"]) for r in rows] == [
        ("TCGA_AA_0001_20000101", "2"),
        ("TCGA_BB_0002_20000102", "3"),
        ("scan.nii.gz", "4"),
    ]
    voxels = int(np.asarray(result.dataobj).sum())
    assert int(rows[2]["lesion_voxels"]) == voxels
    assert float(rows[2]["lesion_volume_mm3"]) == round(voxels * 0.9 * 0.9 * 3.0, 3)
