"""Fold ensembles: the mean of the members' probabilities, the members found and checked, and
inference.json with ``crossval`` against its single model."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from networks import UNet
from pipeline.inference.ensemble import FoldEnsemble, fold_ensemble, held_out, member_settings
from pipeline.inference.fold_models import crossval_folder, crossval_folds
from pipeline.inference.workflow import run_inference
from tests.fold_support import ROOT, phantom_slices, tiny_network, write_fold_run

NAME = "cv2-test"


@pytest.fixture(scope="module")
def phantom(tmp_path_factory) -> Path:
    from pipeline.data.phantom import generate_dataset

    folder = tmp_path_factory.mktemp("phantom") / "data"
    generate_dataset(folder, n_patients=1, seed=3, workers=1)
    return folder


@pytest.fixture(scope="module")
def slices(phantom) -> torch.Tensor:
    return phantom_slices(phantom)[4:20]


@pytest.fixture(scope="module")
def models(slices) -> list[UNet]:
    return [tiny_network(seed, slices) for seed in (0, 1)]


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z.astype(np.float64)))


def test_an_ensemble_of_one_gives_its_models_logits_and_masks(models, slices):
    model = models[0]
    with torch.no_grad():
        single, ensemble = model(slices), FoldEnsemble([model]).eval()(slices)
    assert single.abs().max() < 13  # within the clamp: the logits themselves must agree
    np.testing.assert_allclose(ensemble.numpy(), single.numpy(), atol=2e-5, rtol=1e-5)
    mask = torch.sigmoid(single) > 0.5
    assert 0.05 < mask.float().mean() < 0.5  # neither empty nor full: the comparison means something
    assert torch.equal(torch.sigmoid(ensemble) > 0.5, mask)


def test_an_ensemble_of_two_is_the_mean_of_their_probabilities(models, slices):
    with torch.no_grad():
        logits = [m(slices).numpy() for m in models]
        ensemble = FoldEnsemble(models).eval()(slices).numpy()
    mean = (_sigmoid(logits[0]) + _sigmoid(logits[1])) / 2
    with torch.no_grad():
        each = FoldEnsemble(models).member_probabilities(slices).numpy()
    np.testing.assert_allclose(each, np.stack([_sigmoid(z) for z in logits]), atol=1e-6)
    np.testing.assert_allclose(_sigmoid(ensemble), mean, atol=1e-6)
    np.testing.assert_allclose(ensemble, np.log(mean / (1 - mean)), atol=3e-5, rtol=1e-5)


class Constant(torch.nn.Module):
    def __init__(self, logit: float) -> None:
        super().__init__()
        self.logit = logit

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.full_like(x[:, :1], self.logit)


def test_the_mean_is_of_probabilities_not_of_logits():
    out = FoldEnsemble([Constant(4.0), Constant(-1.0)])(torch.zeros(1, 3, 2, 2))
    mean = (_sigmoid(np.array(4.0)) + _sigmoid(np.array(-1.0))) / 2  # 0.6254
    np.testing.assert_allclose(out.numpy(), np.log(mean / (1 - mean)), atol=1e-5)  # 0.511, not 1.5


def test_a_certain_ensemble_stays_finite():
    for logit in (1e4, -1e4):
        out = FoldEnsemble([Constant(logit), Constant(logit)])(torch.zeros(1, 3, 2, 2))
        assert (
            torch.isfinite(out).all()
            and 13 < float(out.abs().max()) < 14
            and float(out.sign().max()) == np.sign(logit)
        )


def test_members_with_other_inputs_are_refused(tmp_path, models):
    with pytest.raises(ValueError, match="channels_in"):
        FoldEnsemble([UNet(channels_in=3, depth=2, n_filters=2), UNet(channels_in=1, depth=2, n_filters=2)])
    with pytest.raises(ValueError, match="at least one member"):
        FoldEnsemble([])
    outputs = tmp_path / "outputs"
    split = {"train": ["A"], "val": ["B"]}
    first = write_fold_run(outputs, NAME, 0, 2, models[0], split)
    second = write_fold_run(outputs, NAME, 1, 2, models[1], split, image_size=32)
    with pytest.raises(ValueError, match="image size 64 vs 32") as error:
        member_settings(outputs / "crossval" / NAME)
    assert str(first / "models" / "model.pt") in str(error.value)
    assert str(second / "models" / "model.pt") in str(error.value)


def test_the_folds_are_found_from_the_crossval_or_a_fold_run_folder(tmp_path, models):
    outputs = tmp_path / "outputs"
    with pytest.raises(FileNotFoundError, match=f"python -m pipeline crossval --crossval_name {NAME}"):
        crossval_folds(outputs / "crossval" / NAME)
    write_fold_run(outputs, NAME, 0, 3, models[0], {"train": ["A"], "val": ["B"]})
    write_fold_run(outputs, NAME, 2, 3, models[1], {"train": ["B"], "val": ["A"]}, finished=False)
    with pytest.raises(FileNotFoundError, match="fold 1 of the 3-fold") as error:
        crossval_folds(outputs / "runs" / f"{NAME}-fold0")
    assert f"python -m pipeline crossval --fold 1 --crossval_name {NAME}" in str(error.value)
    write_fold_run(outputs, NAME, 1, 3, models[1], {"train": ["B"], "val": ["A"]})
    with pytest.raises(FileNotFoundError, match="fold 2 .* has not finished training.*--resume true"):
        crossval_folds(outputs / "crossval" / NAME)
    torch.save(models[1].state_dict(), outputs / "runs" / f"{NAME}-fold2" / "models" / "final.pt")
    found = crossval_folds(outputs / "runs" / f"{NAME}-fold2")
    assert found.checkpoints == tuple(
        outputs / "runs" / f"{NAME}-fold{i}" / "models" / "model.pt" for i in range(3)
    )
    assert crossval_folder(outputs / "runs" / f"{NAME}-fold1") == str(outputs.resolve() / "crossval" / NAME)
    with pytest.raises(ValueError, match="neither a cross-validation folder"):
        crossval_folds(tmp_path)
    with pytest.raises(ValueError, match="the configs take a cross-validation folder"):
        crossval_folder([str(c) for c in found.checkpoints])


def test_evaluation_refuses_patients_the_folds_have_seen(tmp_path, models):
    outputs = tmp_path / "outputs"
    write_fold_run(outputs, NAME, 0, 2, models[0], {"train": ["A", "B"], "val": ["C"]})
    write_fold_run(outputs, NAME, 1, 2, models[1], {"train": ["C", "B"], "val": ["A"]})
    crossval = outputs / "crossval" / NAME
    records = [{"patient": "D", "image": "x"}, {"patient": "E", "image": "y"}]
    assert held_out(records, crossval) is records
    assert held_out([{"patient": "A"}], None) == [{"patient": "A"}]  # a single model: not checked here
    with pytest.raises(ValueError, match=r"on 1 patients its folds trained or were selected on \(C\)"):
        held_out([*records, {"patient": "C"}], crossval)


def test_inference_json_with_a_one_fold_crossval_writes_the_masks_of_its_model(tmp_path, models, phantom):
    """inference.json's ``crossval`` against ``ckpt_path`` of the same model; and the ensemble of
    two through the config against :func:`fold_ensemble` applied by hand."""
    from monai.bundle import ConfigWorkflow

    outputs = tmp_path / "outputs"
    run = write_fold_run(outputs, "cv1", 0, 1, models[0], {"train": [], "val": []})

    def infer(out: Path, **keys) -> dict[str, np.ndarray]:
        workflow = ConfigWorkflow(
            config_file=str(ROOT / "bundle" / "configs" / "inference.json"),
            meta_file=str(ROOT / "bundle" / "configs" / "metadata.json"),
            logging_file=False,
            workflow_type="infer",
            dataset_dir=str(phantom),
            output_dir=str(out),
            report=False,
            **keys,
        )
        workflow.initialize()
        workflow.run()
        workflow.finalize()
        return {p.name: np.asarray(nib.load(p).dataobj) for p in out.glob("*_mask.nii.gz")}

    single = infer(tmp_path / "single", ckpt_path=str(run / "models" / "model.pt"))
    ensemble = infer(tmp_path / "ensemble", crossval=str(outputs / "crossval" / "cv1"))
    assert single.keys() == ensemble.keys() and len(single) == 1
    for name, mask in single.items():
        assert 0.01 < (mask > 0).mean() < 0.6
        np.testing.assert_array_equal(ensemble[name], mask)
    csv = (tmp_path / "ensemble" / "lesion_volumes.csv").read_text()
    assert csv == (tmp_path / "single" / "lesion_volumes.csv").read_text()
    # two folds through the config: the masks of fold_ensemble applied by hand, not those of fold 0
    write_fold_run(outputs, "cv2", 0, 2, models[0], {"train": [], "val": []})
    write_fold_run(outputs, "cv2", 1, 2, models[1], {"train": [], "val": []})
    two = infer(tmp_path / "two", crossval=str(outputs / "runs" / "cv2-fold1"))
    by_hand = tmp_path / "by_hand"
    folds_config = outputs / "runs" / "cv2-fold0" / "config.json"  # the folds' recipe (train.json's)
    run_inference(
        phantom,
        fold_ensemble(outputs / "crossval" / "cv2"),
        by_hand,
        image_size=64,
        report=False,
        training_config=folds_config,
    )
    for name, mask in two.items():
        np.testing.assert_array_equal(mask, np.asarray(nib.load(by_hand / name).dataobj))
        assert not np.array_equal(mask, single[name])
