"""bundle/configs/inference.json: the MONAI bundle workflow, and its agreement with train.json."""

from __future__ import annotations

import csv
from pathlib import Path

import nibabel as nib
import numpy as np
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


def image_only(transform: dict) -> dict:
    """A train.json transform restricted to the image key (per-key lists reduced to the image's entry)."""
    keys = transform["keys"] if isinstance(transform["keys"], list) else [transform["keys"]]
    index = keys.index("image")
    restricted = dict(transform, keys=["image"])
    for name, value in transform.items():
        if name != "keys" and name != "spatial_size" and isinstance(value, list) and len(value) == len(keys):
            restricted[name] = value[index]
    return restricted


def with_key_list(transform: dict) -> dict:
    keys = transform["keys"]
    return dict(transform, keys=keys if isinstance(keys, list) else [keys])


def write_slice(path: Path, seed: int = 0, shape=(40, 48)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    tifffile.imwrite(path, rng.integers(0, 255, (*shape, 3), dtype=np.uint8))


def test_tiff_preprocessing_is_the_training_one(tmp_path):
    train, infer = parser_of("train.json"), parser_of("inference.json")
    train_chain = [
        image_only(t)
        for t in train["deterministic_transforms"]
        if "image" in (t["keys"] if isinstance(t["keys"], list) else [t["keys"]])
    ]
    infer_chain = [with_key_list(t) for t in infer["preprocessing"]["transforms"]]
    assert infer_chain == train_chain
    assert infer["network_def"] == train["network_def"]
    assert infer["image_size"] == train["image_size"]

    # the same numbers, from the configs, the Python mirror, and the volume-slice path
    image = tmp_path / "TCGA_AA_0001_20000101" / "TCGA_AA_0001_20000101_1.tif"
    write_slice(image)
    mask = image.with_name("TCGA_AA_0001_20000101_1_mask.tif")
    tifffile.imwrite(mask, np.zeros((40, 48), np.uint8))
    train, infer = parser_of("train.json", image_size=32), parser_of("inference.json", image_size=32)
    expected = train.get_parsed_content("validate#preprocessing")({"image": str(image), "label": str(mask)})[
        "image"
    ]
    assert tuple(expected.shape) == (3, 32, 32)
    from_config = infer.get_parsed_content("preprocessing")({"image": str(image)})["image"]
    from_python = tiff_preprocessing(32)({"image": str(image)})["image"]
    raw = np.moveaxis(tifffile.imread(image), -1, 0).astype(np.float32)
    from_slice = infer.get_parsed_content("slice_preprocessing")({"image": raw})["image"]
    for result in (from_config, from_python, from_slice):
        assert type(result) is torch.Tensor and result.dtype == torch.float32
        torch.testing.assert_close(result, expected, rtol=0, atol=1e-6)


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
