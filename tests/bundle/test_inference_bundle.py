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
    from pipeline.training.model_settings import trained_settings

    # a checkpoint without a run config gets train.json's network and image size
    train, infer = parser_of("train.json"), parser_of("inference.json")
    bare = tmp_path / "model.pt"
    torch.save({}, bare)
    fallback = trained_settings(bare)
    assert fallback.network == train["network_def"] and fallback.image_size == train["image_size"]
    assert infer["network_def"]["_target_"] == train["network_def"]["_target_"]

    # the same numbers, from the configs, the Python entry point, and the volume-slice path
    image = tmp_path / "TCGA_AA_0001_20000101" / "TCGA_AA_0001_20000101_1.tif"
    write_slice(image)
    mask = image.with_name("TCGA_AA_0001_20000101_1_mask.tif")
    tifffile.imwrite(mask, np.zeros((40, 48), np.uint8))
    # without a run config the chain is the tutorial's (per-slice min-max): train.json's with it
    train = parser_of("train.json", image_size=32, intensity="slice")
    infer = parser_of("inference.json", image_size=32, training_config=None)
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
    """A change to train.json's chain reaches inference.json and Python inference (the exported
    bundle reads its train.json with the same code: tests/bundle/test_exported_bundle.py)."""
    import json

    config = json.loads((CONFIGS / "train.json").read_text())
    (scale,) = [t for t in config["deterministic_transforms"] if t["_target_"] == "ScaleIntensityd"]
    scale["maxv"] = 2.0
    config["intensity"] = "slice"  # ScaleIntensityd is the chain's scaling with it
    changed = tmp_path / "train.json"
    changed.write_text(json.dumps(config))
    image = tmp_path / "p" / "p_1.tif"
    write_slice(image)
    infer = parser_of("inference.json", image_size=32, training_config=str(changed))
    out = infer.get_parsed_content("preprocessing")({"image": str(image)})["image"]
    assert float(out.max()) == pytest.approx(2.0, abs=0.05) and float(out.min()) >= 0.0
    default = parser_of("inference.json", image_size=32, training_config=None).get_parsed_content(
        "preprocessing"
    )
    torch.testing.assert_close(out, 2.0 * default({"image": str(image)})["image"], rtol=0, atol=1e-5)


def test_bundle_workflow_infers_tiff_and_nifti(tmp_path):
    data, out = tmp_path / "in", tmp_path / "out"
    for patient, n in (("TCGA_AA_0001_20000101", 2), ("TCGA_BB_0002_20000102", 3)):
        for k in range(1, n + 1):
            write_slice(data / patient / f"{patient}_{k}.tif", seed=k, shape=(32, 32))
    affine = np.diag([0.9, 0.9, 3.0, 1.0])
    rng = np.random.default_rng(3)
    # three sequences, channel last (a single-channel volume is FLAIR alone: refused by default)
    nib.save(nib.Nifti1Image(rng.random((32, 24, 4, 3), dtype=np.float32), affine), data / "scan.nii.gz")
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


def _infer(tmp_path: Path, data: Path, ckpt: Path, out: Path, **overrides) -> None:
    workflow = ConfigWorkflow(
        config_file=str(CONFIGS / "inference.json"),
        meta_file=str(CONFIGS / "metadata.json"),
        logging_file=False,
        workflow_type="infer",
        bundle_root=str(tmp_path),
        dataset_dir=str(data),
        ckpt_path=str(ckpt),
        output_dir=str(out),
        **overrides,
    )
    workflow.initialize()
    workflow.run()
    workflow.finalize()


def test_tta_true_is_the_flip_average_of_the_logits_and_false_the_plain_network(tmp_path):
    """inference.json ``tta``: the flip average evaluate.json's ``tta`` option measures, computed
    here independently with the network alone (slices at the network's size: no resize)."""
    patient = "TCGA_AA_0001_20000101"
    files = [tmp_path / "in" / patient / f"{patient}_{k}.tif" for k in (1, 2, 3)]
    for k, path in enumerate(files):
        write_slice(path, seed=10 + k, shape=(32, 32))
    torch.manual_seed(0)
    network = UNet(n_filters=2, depth=3).eval()
    ckpt = tmp_path / "model.pt"
    torch.save(network.state_dict(), ckpt)

    raw = torch.from_numpy(
        np.stack([np.moveaxis(tifffile.imread(p), -1, 0) for p in files]).astype(np.float32)
    )
    x = (raw - raw.amin(dim=(1, 2, 3), keepdim=True)) / (
        raw.amax(dim=(1, 2, 3), keepdim=True) - raw.amin(dim=(1, 2, 3), keepdim=True)
    )
    with torch.no_grad():
        logits = network(x)[:, 0]
        flipped = torch.flip(network(torch.flip(x, dims=[-1])), dims=[-1])[:, 0]
    plain, averaged = torch.sigmoid(logits).numpy(), torch.sigmoid((logits + flipped) / 2).numpy()
    threshold = float(np.median(averaged))  # half the pixels lesion: the masks say something
    assert 0.0 < threshold < 1.0

    settings = {"network_def#n_filters": 2, "network_def#depth": 3, "image_size": 32, "threshold": threshold}
    masks = {}
    for tta in (False, True):
        out = tmp_path / f"out-{tta}"
        _infer(tmp_path, tmp_path / "in", ckpt, out, tta=tta, **settings)
        masks[tta] = np.stack([tifffile.imread(out / patient / f"{p.stem}_mask.tif") > 0 for p in files])
    for tta, expected in ((False, plain), (True, averaged)):
        decided = np.abs(expected - threshold) > 1e-5  # float noise only at the threshold itself
        np.testing.assert_array_equal(masks[tta][decided], (expected > threshold)[decided])
    assert (masks[True] != masks[False]).sum() > 20  # the flip changed the masks


def test_tta_reads_the_command_line_strings():
    from pipeline.inference.tta import FlipTTA

    torch.manual_seed(0)
    network = torch.nn.Conv2d(3, 1, 3, padding=1)
    x = torch.rand(2, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(FlipTTA("false")(x, network), network(x))
        average = (network(x) + torch.flip(network(torch.flip(x, dims=[-1])), dims=[-1])) / 2
        torch.testing.assert_close(FlipTTA("true")(x, network), average)
