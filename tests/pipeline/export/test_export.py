"""Export and verify: the exported MONAI bundle, its configs, its vendored code and its parity.

The model is a seeded tiny U-Net whose head bias is set so that about a fifth of the pixels of the
phantom slices are lesion: random weights, but masks that are neither empty nor full and that change
when rows and columns are swapped, so an orientation or resizing mistake shows. The bundle run by a
Python that cannot import this repository: tests/bundle/test_exported_bundle.py.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.metadata
import json
import re
import shutil
import subprocess
import sys
import zipfile

import numpy as np
import onnxruntime
import pytest
import torch

from networks import UNet
from pipeline import cli
from pipeline.export.build import export_bundle
from pipeline.export.layout import MODEL_FILES, sha256
from pipeline.export.sources import source_from_checkpoint
from pipeline.export.verify import verify_bundle
from tests.pipeline.export.support import NETWORK, ROOT, phantom_slices


def test_bundle_layout_zip_and_metadata(exported, run_dir):
    import monai

    bundle, archive, seconds = exported
    expected = {
        "configs/inference.json",
        "configs/metadata.json",
        "configs/logging.conf",
        "configs/train.json",
        "configs/evaluate.json",
        *MODEL_FILES,
        "scripts/__init__.py",
        "scripts/loader.py",
        "scripts/pipeline/inference/workflow.py",
        "scripts/networks/unet.py",
        "scripts/transforms/reader.py",
        "docs/README.md",
        "LICENSE",
    }
    files = {p.relative_to(bundle).as_posix() for p in bundle.rglob("*") if p.is_file()}
    assert expected <= files
    assert not [name for name in files if "__pycache__" in name or name.endswith(".pyc")]
    with zipfile.ZipFile(archive) as zf:
        assert {f"{bundle.name}/{name}" for name in expected} <= set(zf.namelist())
        # the bundle folder unzips readable by others (not mkdtemp's 0700)
        assert (zf.getinfo(f"{bundle.name}/").external_attr >> 16) & 0o777 == 0o755
    assert bundle.stat().st_mode & 0o777 == 0o755
    meta = json.loads((bundle / "configs" / "metadata.json").read_text())
    assert meta["monai_version"] == monai.__version__
    assert meta["pytorch_version"] == torch.__version__.split("+")[0]
    assert meta["numpy_version"] == np.__version__
    image = meta["network_data_format"]["inputs"]["image"]
    assert image["num_channels"] == 3 and image["spatial_shape"] == ["4*n", "4*n"]  # depth 3: 2**2
    assert image["channel_def"] == {"0": "pre-contrast", "1": "FLAIR", "2": "post-contrast"}
    assert meta["network_data_format"]["outputs"]["pred"]["num_channels"] == 1
    assert meta["eval_metrics"]["eval_threshold_dice_mean"] == 0.61
    for name in MODEL_FILES:
        assert meta["model_files"][name]["sha256"] == sha256(bundle / name)
    scripts = sorted(name for name in files if name.startswith("scripts/"))
    assert sorted(meta["scripts_files"]) == scripts
    assert all(meta["scripts_files"][name]["sha256"] == sha256(bundle / name) for name in scripts)
    # weights only, identical to the run's
    state = torch.load(bundle / "models" / "model.pt", weights_only=True)
    original = torch.load(run_dir / "models" / "model.pt", weights_only=True)
    assert all(torch.equal(state[k], original[k]) for k in original)
    card = (bundle / "docs" / "README.md").read_text()
    assert "eval_threshold_dice_mean | 0.61" in card and "${" not in card
    assert "Apache License" in (bundle / "LICENSE").read_text()
    assert seconds < 60
    assert not [p.name for p in bundle.parent.iterdir() if p.name.startswith(".")]  # no staging left


def test_metadata_lists_the_packages_the_vendored_code_imports(exported):
    bundle, _, _ = exported
    meta = json.loads((bundle / "configs" / "metadata.json").read_text())
    # independently: the first word after "import"/"from" in every vendored file, by a regular expression
    words = set()
    for path in (bundle / "scripts").rglob("*.py"):
        words |= set(re.findall(r"^\s*(?:from|import)\s+([A-Za-z_]\w*)", path.read_text(), re.MULTILINE))
    by_import = {"pytorch-ignite": "ignite", "scikit-image": "skimage", "pillow": "PIL"}
    required = meta["required_packages_version"]
    for dist, version in required.items():
        assert version == importlib.metadata.version(dist).split("+")[0], dist
        if dist != "fire":  # python -m monai.bundle's command line
            assert by_import.get(dist, dist) in words, f"{dist} is listed but not imported"
    readers_and_writers = ("ignite", "nibabel", "itk", "tifffile", "pydicom", "highdicom")
    assert set(readers_and_writers) <= words
    for dist, name in (*by_import.items(), *((d, d) for d in ("nibabel", "itk", "tifffile", "scipy"))):
        assert (dist in required) == (name in words), dist
    assert "mlflow" not in required and "mlflow" not in words  # training tracking is not vendored
    assert meta["monai_version"] == importlib.metadata.version("monai")


def test_post_processing_defaults_are_the_best_evaluated_option(exported):
    bundle, _, _ = exported
    meta = json.loads((bundle / "configs" / "metadata.json").read_text())
    chosen = meta["postprocessing"]
    # summary.json of run_dir: threshold 0.61, threshold+lcc 0.66, tta 0.63, tta+lcc 0.66 (a tie:
    # the simpler option), threshold+mcs 0.9 (no inference option)
    assert chosen["option"] == "threshold+lcc"
    assert (chosen["tta"], chosen["largest_component"]) == (False, True)
    assert chosen["per_volume_dice_mean"] == {
        "threshold": 0.61,
        "threshold+lcc": 0.66,
        "tta": 0.63,
        "tta+lcc": 0.66,
    }
    assert "over 3 patients" in chosen["reason"] and "tie" in chosen["reason"]
    inference = json.loads((bundle / "configs" / "inference.json").read_text())
    project = json.loads((ROOT / "bundle" / "configs" / "inference.json").read_text())
    assert {"tta", "largest_component"} <= set(project)
    assert (inference["tta"], inference["largest_component"]) == (False, True)
    assert chosen["not_applied"] == []
    card = (bundle / "docs" / "README.md").read_text()
    assert "Post-processing defaults: `threshold+lcc`" in card


def test_without_an_evaluation_the_bundle_gets_the_plain_threshold():
    from pipeline.export.choice import best_option

    chosen = best_option({"best_val_volume_dice": 0.8})
    assert chosen["option"] == "threshold" and not chosen["tta"] and not chosen["largest_component"]
    assert "no evaluation" in chosen["reason"]
    assert best_option({"eval_tta_dice_mean": 0.7, "eval_threshold_dice_mean": 0.69})["option"] == "tta"


def _undone(config):
    """A bundle config with the vendored names put back, by text: what it would be in the repository."""
    if isinstance(config, dict):
        return {k: _undone(v) for k, v in config.items() if k not in ("_requires_", "scripts")}
    if isinstance(config, list):
        return [_undone(v) for v in config if v not in ("$import os", "$import runpy", "$import scripts")]
    if isinstance(config, str):
        return config.replace("@scripts.", "").replace("scripts.", "")
    return config


def test_exported_configs_are_the_projects_with_the_bundles_names(exported, run_dir):
    bundle, _, _ = exported
    project = json.loads((ROOT / "bundle" / "configs" / "inference.json").read_text())
    inference = json.loads((bundle / "configs" / "inference.json").read_text())
    # no name of this repository is left outside the bundle's scripts package
    for name in ("inference.json", "train.json", "evaluate.json"):
        text = (bundle / "configs" / name).read_text()
        assert not re.search(r"(?<![\w.@])(pipeline|transforms|networks)\.", text), name
    assert (
        inference["scripts"]
        == "$runpy.run_path(os.path.join(@bundle_root, 'scripts', 'loader.py'))['load']()"
    )
    assert inference["ckpt_path"] == "$@bundle_root + '/models/model.pt'"
    components = [v for v in _walk(inference) if isinstance(v, dict) and "_target_" in v]
    for component in components:  # our components wait for the package; MONAI's need nothing
        assert (component.get("_requires_") == "@scripts") == component["_target_"].startswith("scripts.")
    # the project's inference.json, apart from the keys a bundle must set
    set_by_export = {"ckpt_path", "tta", "largest_component", "metadata_file", "model_info"}
    # keys an inference.json holds constants for, not values it reads from the checkpoint's run
    set_by_export |= {k for k in ("training_config", "image_size") if not str(project[k]).startswith("$")}
    if any(v is not None for k, v in project["network_def"].items() if not k.startswith("_")):
        set_by_export.add("network_def")
    repository_imports = [i for i in project["imports"] if re.match(r"\$import (pipeline|transforms)", i)]
    expected = {k: v for k, v in project.items() if k not in set_by_export}
    expected["imports"] = [i for i in project["imports"] if i not in repository_imports]
    got = {k: v for k, v in _undone(inference).items() if k not in set_by_export}
    assert got == expected
    # the outputs name the exported model: fixed at export, as a run folder would give it
    recorded = json.loads((ROOT / "bundle" / "configs" / "metadata.json").read_text())
    assert inference["model_info"] == {
        "bundle_name": recorded["name"],
        "bundle_version": recorded["version"],
        "weights_sha256": hashlib.sha256((bundle / "models" / "model.pt").read_bytes()).hexdigest(),
        "training_run": run_dir.name,
        "validation_volume_dice": 0.61,  # the evaluation's threshold option (summary.json)
    }
    # train.json: the run's config, names moved
    run_config = json.loads((run_dir / "config.json").read_text())
    train = json.loads((bundle / "configs" / "train.json").read_text())
    assert _undone(train) == dict(_undone(run_config), bundle_root=".")
    assert "$import scripts" in train["imports"]


def _walk(value):
    yield value
    children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
    for child in children:
        yield from _walk(child)


def _without_imports(tree: ast.AST) -> str:
    for node in ast.walk(tree):
        for field in ("body", "orelse", "finalbody", "handlers"):
            block = getattr(node, field, None)
            if isinstance(block, list):
                setattr(node, field, [s for s in block if not isinstance(s, ast.Import | ast.ImportFrom)])
    return ast.dump(tree)


def test_vendored_code_is_the_repositorys_with_its_imports_moved(exported):
    bundle, _, _ = exported
    scripts = bundle / "scripts"
    vendored = {
        p.relative_to(scripts).with_suffix("").as_posix().replace("/", ".") for p in scripts.rglob("*.py")
    }
    vendored = {m.removesuffix(".__init__") for m in vendored}
    for path in sorted(scripts.rglob("*.py")):
        relative = path.relative_to(scripts)
        if relative.as_posix() in ("__init__.py", "loader.py"):
            continue
        original = (ROOT / relative).read_text()
        text = path.read_text()
        assert len(text.splitlines()) == len(original.splitlines()), relative  # tracebacks keep their lines
        assert _without_imports(ast.parse(text)) == _without_imports(ast.parse(original)), relative
        for node in ast.walk(ast.parse(text)):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and not node.level:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            for name in names:
                assert name.split(".")[0] not in ("pipeline", "transforms", "networks"), (relative, name)
                if name.startswith("scripts."):
                    inner = name.removeprefix("scripts.")
                    assert inner in vendored or inner.rsplit(".", 1)[0] in vendored, (relative, name)
    # what inference imports is all there: asked of a fresh process, as this one holds whatever
    # the tests before imported (pipeline.inference.ensemble_gain, a CLI no bundle needs)
    probe = (
        "import sys, pipeline.inference.workflow, pipeline.inference.ensemble\n"
        "import pipeline.training.model_settings\n"
        "print('\\n'.join(n for n, m in list(sys.modules.items()) if getattr(m, '__file__', None)))"
    )
    names = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    loaded = {name for name in names if name.startswith(("pipeline.inference", "transforms", "networks"))}
    assert "pipeline.inference.slice_dataset" in loaded
    assert loaded <= vendored, sorted(loaded - vendored)
    assert "pipeline.inference.workflow" in vendored and "pipeline.tracking.training_run" not in vendored


def test_verify_bundle_passes_and_names_what_is_wrong(exported, tmp_path):
    bundle, _, _ = exported
    assert verify_bundle(bundle) == []
    assert cli.main(["verify-bundle", str(bundle)]) == 0

    tampered = tmp_path / "tampered"
    shutil.copytree(bundle, tampered)
    with open(tampered / "models" / "model.onnx", "ab") as handle:
        handle.write(b"\0")
    problems = verify_bundle(tampered)
    assert problems and all("model.onnx" in p for p in problems)
    assert any("sha256 differs" in p for p in problems)  # and onnxruntime cannot parse it either
    assert cli.main(["verify-bundle", str(tampered)]) == 1

    meta_path = tampered / "configs" / "metadata.json"
    meta = json.loads(meta_path.read_text())
    del meta["network_data_format"]["inputs"]["image"]["num_channels"]
    meta_path.write_text(json.dumps(meta))
    assert any("metadata.json" in p and "num_channels" in p for p in verify_bundle(tampered))

    (tampered / "models" / "model.ts").unlink()
    assert verify_bundle(tampered) == [f"{tampered / 'models' / 'model.ts'}: missing"]


def test_torchscript_and_onnx_match_pytorch_on_phantom_slices(exported, run_dir, phantom):
    bundle, _, _ = exported
    network = UNet(**{k: v for k, v in NETWORK.items() if k != "_target_"})
    network.load_state_dict(torch.load(run_dir / "models" / "model.pt", weights_only=True))
    network.eval()
    scripted = torch.jit.load(str(bundle / "models" / "model.ts")).eval()
    session = onnxruntime.InferenceSession(
        str(bundle / "models" / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    slices = phantom_slices(phantom)
    worst = {}
    for batch in (1, 4):
        x = slices[:batch]
        with torch.no_grad():
            reference = network(x)
            script_out = scripted(x)
        onnx_out = torch.from_numpy(session.run(None, {"image": x.numpy()})[0])
        worst[batch] = (
            float((script_out - reference).abs().max()),
            float((onnx_out - reference).abs().max()),
        )
        torch.testing.assert_close(script_out, reference, rtol=0, atol=1e-4)
        torch.testing.assert_close(onnx_out, reference, rtol=0, atol=1e-4)
    print("max |diff| (TorchScript, ONNX) by batch size:", worst)


def test_export_refuses_a_non_empty_folder_and_a_missing_checkpoint(exported, run_dir, tmp_path, caplog):
    bundle, _, _ = exported
    with pytest.raises(FileExistsError, match="not empty"):
        export_bundle(source_from_checkpoint(run_dir / "models" / "model.pt"), bundle)
    code = cli.main(["export", "--checkpoint", str(tmp_path / "nope.pt"), "--out", str(tmp_path / "b")])
    assert code == 1 and "nope.pt" in caplog.text


def test_an_export_that_fails_midway_leaves_nothing(run_dir, tmp_path, caplog):
    """A run config naming code that is not in the repository fails while the bundle is written
    (after the weights and configs): no folder, no zip, no staging folder is left."""
    source = source_from_checkpoint(run_dir / "models" / "model.pt")
    source.config["deterministic_transforms"].append({"_target_": "pipeline.nowhere.Thing", "keys": "image"})
    out = tmp_path / "exports" / "lgg"
    with pytest.raises(ValueError, match=r"pipeline\.nowhere\.Thing in the bundle configs is no module"):
        export_bundle(source, out)
    assert list((tmp_path / "exports").iterdir()) == []
