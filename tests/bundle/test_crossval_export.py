"""``python -m pipeline export --crossval``: a cross-validation's fold ensemble as one bundle.

Two fold runs (seeded tiny U-Nets, as ``python -m pipeline crossval`` leaves them, with a pooled
summary) are exported; the bundle must pass verification and import, record its folds, and, unzipped
and run by ``python -m monai.bundle`` in a Python that cannot import this repository, write the
masks that this project's inference.json with ``--crossval`` writes on the same patient.
"""

from __future__ import annotations

import json
import shutil
import sysconfig
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from pipeline.export.build import export_bundle
from pipeline.export.crossval_source import source_from_crossval_folder
from pipeline.export.layout import sha256
from pipeline.inference.ensemble import fold_ensemble
from tests.fold_support import phantom_slices, tiny_network, write_fold_run
from tests.support import CONFIGS, run_isolated

NAME = "cv2-export"
CONSUMER = """
import atexit, importlib.util, json, runpy, sys
sys.path.append({site!r})
for name in ("networks", "transforms", "pipeline"):
    if importlib.util.find_spec(name) is not None:
        raise SystemExit(f"{{name}} is importable: the consumer is not isolated from the repository")
atexit.register(lambda: print(json.dumps({{"scripts": sys.modules["scripts"].__file__}})))
sys.argv = ["monai.bundle", "run", "--config_file", {config!r}, "--bundle_root", {bundle!r},
            "--dataset_dir", {data!r}, "--output_dir", {out!r}]
runpy.run_module("monai.bundle", run_name="__main__", alter_sys=True)
"""


@pytest.fixture(scope="module")
def setting(tmp_path_factory) -> dict:
    from pipeline.data.phantom import generate_dataset

    root = tmp_path_factory.mktemp("crossval_export")
    data = generate_dataset(root / "data", n_patients=1, seed=3, workers=1)
    slices = phantom_slices(data)[4:20]
    outputs = root / "outputs"
    split = {"train": ["A"], "val": ["B"]}
    runs = [write_fold_run(outputs, NAME, i, 2, tiny_network(i, slices), split) for i in range(2)]
    folder = outputs / "crossval" / NAME
    folder.mkdir(parents=True)
    dice = {"threshold": 0.6, "threshold+lcc": 0.65, "tta": 0.62}
    aggregates = {option: {"dice": {"mean": v, "median": v}} for option, v in dice.items()}
    (folder / "summary.json").write_text(json.dumps({"folds": 2, "n_patients": 4, "aggregates": aggregates}))
    bundle, archive = export_bundle(source_from_crossval_folder(folder), root / "export" / "lgg_cv")
    return {"root": root, "data": data, "runs": runs, "folder": folder, "bundle": bundle, "archive": archive}


def test_the_bundle_is_the_ensemble_of_its_folds_and_verifies(setting, tmp_path):
    from pipeline.export.safe_import import import_bundle
    from pipeline.export.verify import verify_bundle

    bundle = setting["bundle"]
    meta = json.loads((bundle / "configs" / "metadata.json").read_text())
    members = meta["crossval"]["members"]
    assert [m["run"] for m in members] == [f"{NAME}-fold0", f"{NAME}-fold1"]
    assert [m["model_pt_sha256"] for m in members] == [
        sha256(r / "models" / "model.pt") for r in setting["runs"]
    ]
    assert meta["crossval"]["folds"] == 2 and meta["eval_metrics"]["eval_threshold_lcc_dice_mean"] == 0.65
    assert meta["postprocessing"]["option"] == "threshold+lcc"  # the best pooled out-of-fold Dice
    inference = json.loads((bundle / "configs" / "inference.json").read_text())
    assert inference["network"]["_target_"] == "scripts.pipeline.inference.ensemble.load_ensemble"
    assert inference["network"]["folds"] == 2 and "crossval" not in inference["network"]
    assert (bundle / "scripts" / "pipeline" / "inference" / "ensemble.py").is_file()
    assert "fold ensemble" in (bundle / "docs" / "README.md").read_text()
    # model.pt holds each fold's weights under members.<i>; model.ts is the ensemble
    state = torch.load(bundle / "models" / "model.pt", weights_only=True)
    for i, run in enumerate(setting["runs"]):
        fold = torch.load(run / "models" / "model.pt", weights_only=True)
        assert all(torch.equal(state[f"members.{i}.{k}"], v) for k, v in fold.items())
    assert len(state) == 2 * len(fold)
    x = phantom_slices(setting["data"])[8:12]
    with torch.no_grad():
        scripted = torch.jit.load(str(bundle / "models" / "model.ts")).eval()(x)
        expected = fold_ensemble(setting["folder"]).eval()(x)
    torch.testing.assert_close(scripted, expected, atol=1e-5, rtol=1e-5)
    assert verify_bundle(bundle) == []
    assert (import_bundle(setting["archive"], tmp_path / "received") / "configs" / "metadata.json").is_file()


def test_a_bundle_of_other_recipes_or_a_tampered_loader_is_refused(setting, tmp_path):
    from pipeline.export.verify import check_expressions

    outputs = tmp_path / "outputs"
    slices = phantom_slices(setting["data"])[4:8]
    write_fold_run(outputs, "mixed", 0, 2, tiny_network(0, slices), {"train": [], "val": []})
    wider = {"_target_": "networks.UNet", "channels_in": 3, "n_classes": 1, "depth": 3, "n_filters": 3}
    write_fold_run(
        outputs, "mixed", 1, 2, tiny_network(1, slices, wider), {"train": [], "val": []}, network_def=wider
    )
    with pytest.raises(
        ValueError, match="fold 1 .*mixed-fold1.* an exported ensemble holds folds of one recipe"
    ):
        source_from_crossval_folder(outputs / "crossval" / "mixed")
    copy = tmp_path / "copy"
    shutil.copytree(setting["bundle"], copy)
    config = json.loads((copy / "configs" / "inference.json").read_text())
    config["network"]["_target_"] = "scripts.pipeline.inference.ensemble.fold_ensemble"
    (copy / "configs" / "inference.json").write_text(json.dumps(config))
    assert any("network#_target_" in p for p in check_expressions(copy))


def _masks(folder: Path) -> dict[str, np.ndarray]:
    return {
        p.relative_to(folder).as_posix(): np.asarray(nib.load(p).dataobj)
        for p in folder.rglob("*_mask.nii.gz")
    }


@pytest.mark.slow
def test_the_unzipped_bundle_segments_as_the_projects_ensemble(setting):
    from monai.bundle import ConfigWorkflow

    root = setting["root"]
    received = root / "received_zip"
    shutil.unpack_archive(setting["archive"], received)
    bundle = received / setting["bundle"].name
    theirs, ours, elsewhere = root / "theirs", root / "ours", root / "elsewhere"
    elsewhere.mkdir()
    code = CONSUMER.format(
        site=sysconfig.get_paths()["purelib"],
        config=str(bundle / "configs" / "inference.json"),
        bundle=str(bundle),
        data=str(setting["data"]),
        out=str(theirs),
    )
    result = run_isolated(code, elsewhere)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    scripts = json.loads(result.stdout.strip().splitlines()[-1])["scripts"]
    assert scripts == str(bundle / "scripts" / "__init__.py")
    inference = json.loads((bundle / "configs" / "inference.json").read_text())
    workflow = ConfigWorkflow(
        config_file=str(CONFIGS / "inference.json"),
        meta_file=str(CONFIGS / "metadata.json"),
        logging_file=False,
        workflow_type="infer",
        crossval=str(setting["folder"]),
        dataset_dir=str(setting["data"]),
        output_dir=str(ours),
        tta=inference["tta"],
        largest_component=inference["largest_component"],
    )
    workflow.initialize()
    workflow.run()
    workflow.finalize()
    expected, got = _masks(ours), _masks(theirs)
    assert expected.keys() == got.keys() and len(expected) == 1
    for name, mask in expected.items():
        assert 0.01 < (mask > 0).mean() < 0.6, name  # neither empty nor full
        np.testing.assert_array_equal(got[name], mask, err_msg=name)
    assert (theirs / "lesion_volumes.csv").read_text() == (ours / "lesion_volumes.csv").read_text()
