"""crop "head" end to end: a tiny training, its evaluation and inference, checked against numpy."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import tifffile
import torch
import torch.nn.functional as F
from monai.bundle import ConfigWorkflow

from tests.support import CONFIGS, TINY, run_bundle

SIDE = TINY["image_size"]


def _patient_slices(folder: Path) -> list[str]:
    files = [p for p in folder.glob("*.tif") if not p.stem.endswith("_mask")]
    return [str(p) for p in sorted(files, key=lambda p: int(p.stem.rsplit("_", 1)[1]))]


def _label_by_hand(image_file: str) -> np.ndarray:
    """The mask (0/255) to {0, 1}, nearest-exact to SIDE x SIDE: crop "none"'s label."""
    mask = torch.from_numpy((tifffile.imread(image_file.replace(".tif", "_mask.tif")) > 0).astype(np.float32))
    return F.interpolate(mask[None, None], size=(SIDE, SIDE), mode="nearest-exact")[0, 0].numpy()


def _evaluate(root: Path, data: Path, eval_dir: Path, **overrides) -> tuple[ConfigWorkflow, list[dict]]:
    workflow = ConfigWorkflow(
        config_file=[str(CONFIGS / "train.json"), str(CONFIGS / "evaluate.json")],
        meta_file=str(CONFIGS / "metadata.json"),
        logging_file=False,
        workflow_type=None,
        **dict(TINY, bundle_root=str(root), dataset_dir=str(data), eval_dir=str(eval_dir), intensity="slice")
        | overrides,
    )
    workflow.initialize()
    workflow.run()
    workflow.finalize()
    with open(eval_dir / "per_slice.csv") as f:
        return workflow, list(csv.DictReader(f))


def _infer(root: Path, data: Path, out: Path, **overrides) -> None:
    workflow = ConfigWorkflow(
        config_file=str(CONFIGS / "inference.json"),
        meta_file=str(CONFIGS / "metadata.json"),
        logging_file=False,
        workflow_type="infer",
        **dict(bundle_root=str(root), dataset_dir=str(data), output_dir=str(out), num_workers=0, **overrides),
    )
    workflow.initialize()
    workflow.run()
    workflow.finalize()


@pytest.mark.slow
def test_crop_head_trains_evaluates_in_crop_nones_frame_and_infers_masks_of_the_slice(tmp_path, tiny_phantom):
    import mlflow

    from pipeline.data.head_box import tiff_head_box

    train = run_bundle(tmp_path, epochs=1, crop="head", intensity="slice", dataset_dir=str(tiny_phantom))
    data = train.parser.get_parsed_content("data")
    boxes = {}
    for record in data.train + data.val:
        if record["patient"] not in boxes:
            boxes[record["patient"]] = tiff_head_box(_patient_slices(Path(record["image"]).parent))
        assert record["head_box"] == boxes[record["patient"]]
    run_dir = Path(train.parser.get_parsed_content("run_dir"))
    assert json.loads((run_dir / "config.json").read_text())["crop"] == "head"
    logged = json.loads((run_dir / "mlflow_run.json").read_text())
    run = mlflow.MlflowClient(logged["tracking_uri"]).get_run(logged["run_id"])
    assert run.data.params["crop"] == "head" and run.data.params["intensity"] == "slice"
    metrics = train.parser.get_parsed_content("validate#evaluator").state.metrics
    for name in ("val_volume_dice", "val_dice", "val_bce", "val_dice_loss", "val_fp_aware_dice"):
        assert math.isfinite(metrics[name]), name
    assert all(name in run.data.metrics for name in ("val_volume_dice", "val_bce"))

    # training: the cropped label only; validation: the cropped image and the uncropped label
    train_item = train.parser.get_parsed_content("train#dataset")[0]
    assert "label_uncropped" not in train_item and train_item["label"].shape == (1, SIDE, SIDE)
    validation = train.parser.get_parsed_content("validate#dataset")
    for i in range(0, len(validation), 7):
        item, record = validation[i], validation.data[i]
        np.testing.assert_array_equal(item["label_uncropped"][0].numpy(), _label_by_hand(record["image"]))
        assert item["image"].shape == (3, SIDE, SIDE)

    # evaluation: the model's crop by default; the labels compared are crop "none"'s, voxel for voxel
    _, head = _evaluate(tmp_path, tiny_phantom, tmp_path / "eval_head")
    evaluate_none, none = _evaluate(tmp_path, tiny_phantom, tmp_path / "eval_none", crop="none")
    assert evaluate_none.parser.get_parsed_content("crop") == "none"
    key = lambda r: (r["patient"], int(r["slice"]))  # noqa: E731
    head, none = sorted(head, key=key), sorted(none, key=key)
    assert [key(r) for r in head] == [key(r) for r in none] and len(head) == len(validation)
    assert [int(r["true_pixels"]) for r in head] == [int(r["true_pixels"]) for r in none]
    by_hand = {Path(r["image"]).name: int(_label_by_hand(r["image"]).sum()) for r in validation.data}
    assert sum(int(r["true_pixels"]) for r in head) == sum(by_hand.values()) > 0

    # inference with the crop=head model, TTA and its uncertainty maps: masks of the slice's shape,
    # the patient's head box exactly once the network says lesion everywhere (a head bias of +50)
    checkpoint = Path(train.parser.get_parsed_content("ckpt_dir")) / "model.pt"
    weights = torch.load(checkpoint, weights_only=True)
    weights["head.bias"] = weights["head.bias"] + 50.0
    torch.save(weights, checkpoint)
    out = tmp_path / "inferred"
    _infer(tmp_path, tiny_phantom, out, tta=True, uncertainty="tta")
    patient = sorted(boxes)[0]
    files = _patient_slices(tiny_phantom / patient)
    top, left, bottom, right = boxes[patient]
    inside = np.zeros(tifffile.imread(files[0]).shape[:2], bool)
    inside[max(top, 0) : bottom, max(left, 0) : right] = True
    assert 0.3 < inside.mean() < 1.0
    for f in files:
        mask = tifffile.imread(out / patient / Path(f).name.replace(".tif", "_mask.tif"))
        assert mask.shape == tifffile.imread(f).shape[:2]
        np.testing.assert_array_equal(mask > 0, inside)
    assert (out / "report.html").exists()
    uncertainty = np.asarray(nib.load(out / f"{patient}_uncertainty.nii.gz").dataobj)
    assert sorted(uncertainty.shape) == sorted((len(files), *inside.shape))
