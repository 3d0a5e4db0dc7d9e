"""Export and verify: the exported MONAI bundle, its parity and a clean consumer.

The model is a seeded tiny U-Net whose head bias is set so that about a fifth of the pixels of the
phantom slices are lesion: random weights, but masks that are neither empty nor full and that change
when rows and columns are swapped, so an orientation or resizing mistake shows.
"""

from __future__ import annotations

import json
import shutil
import sysconfig
import zipfile

import numpy as np
import onnxruntime
import pytest
import tifffile
import torch

from networks import UNet
from pipeline import cli
from pipeline.export.build import export_bundle
from pipeline.export.layout import MODEL_FILES, sha256, standalone_inference_config
from pipeline.export.sources import source_from_checkpoint
from pipeline.export.verify import verify_bundle
from pipeline.inference.workflow import run_inference
from tests.pipeline.export.support import IMAGE_SIZE, NETWORK, ROOT, phantom_slices
from tests.support import run_isolated


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
        "docs/README.md",
        "LICENSE",
    }
    assert expected <= {p.relative_to(bundle).as_posix() for p in bundle.rglob("*") if p.is_file()}
    with zipfile.ZipFile(archive) as zf:
        assert {f"{bundle.name}/{name}" for name in expected} <= set(zf.namelist())
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
    # weights only, identical to the run's
    state = torch.load(bundle / "models" / "model.pt", weights_only=True)
    original = torch.load(run_dir / "models" / "model.pt", weights_only=True)
    assert all(torch.equal(state[k], original[k]) for k in original)
    card = (bundle / "docs" / "README.md").read_text()
    assert "eval_threshold_dice_mean | 0.61" in card and "${" not in card
    assert "Apache License" in (bundle / "LICENSE").read_text()
    assert seconds < 60


def test_exported_inference_config_needs_no_project_code(exported):
    bundle, _, _ = exported
    text = (bundle / "configs" / "inference.json").read_text()
    for prefix in ("pipeline.", "transforms.", "networks.", "import pipeline", "import transforms"):
        assert prefix not in text
    assert json.loads(text) == json.loads(json.dumps(standalone_inference_config(IMAGE_SIZE)))


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


CONSUMER = """
import json, sys
sys.path.append({site!r})
for name in ("pipeline", "networks", "transforms"):
    try:
        __import__(name)
    except ImportError:
        continue
    raise SystemExit(f"{{name}} is importable: the consumer is not isolated from the repository")
from monai.bundle import ConfigWorkflow

bundle = {bundle!r}
workflow = ConfigWorkflow(
    config_file=bundle + "/configs/inference.json",
    meta_file=bundle + "/configs/metadata.json",
    logging_file=bundle + "/configs/logging.conf",
    workflow_type="infer",
    bundle_root=bundle,
    dataset_dir={data!r},
    output_dir={out!r},
)
workflow.initialize()
problems = workflow.check_properties()
if problems:
    raise SystemExit(f"check_properties: {{problems}}")
workflow.run()
workflow.finalize()
repo = [
    getattr(m, "__file__", None) for m in list(sys.modules.values())
    if (getattr(m, "__file__", None) or "").startswith({repo!r}) and "/.venv/" not in m.__file__
]
print(json.dumps({{"repo_modules": repo}}))
"""


@pytest.mark.slow
def test_clean_consumer_runs_the_bundle_with_monai_alone(exported, run_dir, phantom, tmp_path):
    bundle, archive, _ = exported
    # the team receives the zip, unpacks it somewhere else
    shutil.unpack_archive(archive, tmp_path / "received")
    received = tmp_path / "received" / bundle.name
    theirs = tmp_path / "theirs"
    code = CONSUMER.format(
        site=sysconfig.get_paths()["purelib"],
        bundle=str(received),
        data=str(phantom),
        out=str(theirs),
        repo=str(ROOT) + "/",
    )
    result = run_isolated(code, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout.strip().splitlines()[-1]) == {"repo_modules": []}

    network = UNet(**{k: v for k, v in NETWORK.items() if k != "_target_"})
    network.load_state_dict(torch.load(run_dir / "models" / "model.pt", weights_only=True))
    ours = tmp_path / "ours"
    run_inference(phantom, network.eval(), ours, image_size=IMAGE_SIZE)
    our_masks = sorted(ours.glob("*/*_mask.tif"))
    assert our_masks
    lesion = 0
    for path in our_masks:
        their = theirs / path.relative_to(ours)
        assert their.is_file(), f"the bundle wrote no {their}"
        expected, got = tifffile.imread(path), tifffile.imread(their)
        assert got.shape == expected.shape == (256, 256)
        np.testing.assert_array_equal(got, expected, err_msg=str(path.name))
        lesion += int((expected > 0).sum())
    total = len(our_masks) * 256 * 256
    assert 0.02 * total < lesion < 0.5 * total  # masks neither empty nor full: the comparison means something


def test_export_refuses_a_non_empty_folder_and_a_missing_checkpoint(exported, run_dir, tmp_path, caplog):
    bundle, _, _ = exported
    with pytest.raises(FileExistsError, match="not empty"):
        export_bundle(source_from_checkpoint(run_dir / "models" / "model.pt"), bundle)
    code = cli.main(["export", "--checkpoint", str(tmp_path / "nope.pt"), "--out", str(tmp_path / "b")])
    assert code == 1 and "nope.pt" in caplog.text
