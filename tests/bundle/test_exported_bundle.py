"""The exported bundle runs this project's clinical inference without this repository.

A Python that cannot import the repository (``-S``: no site-packages .pth files, so not the
editable install; only the venv's site-packages on ``PYTHONPATH``; started in another directory
whose own ``scripts/`` and ``pipeline/`` packages raise when imported) runs ``python -m
monai.bundle run`` on the unzipped bundle, as a team receiving it would. Its inputs: (a) a kaggle
TIFF patient, (b) a NIfTI patient of three sequence files on three grids, (c) a patient whose FLAIR
is a DICOM series and whose post-contrast T1 is missing. Its outputs must equal those of this
project's own inference (bundle/configs/inference.json, MONAI's ConfigWorkflow in this process)
on the same inputs with the same model: every mask array, the DICOM Segmentation's frames and
lesion_volumes.csv.

The model is a seeded tiny U-Net whose head bias makes about a fifth of the phantom's pixels
lesion (weights of a real training run would give near-empty masks this small, which would
agree trivially).
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import tifffile
import torch

from networks import UNet
from pipeline.export.build import export_bundle
from pipeline.export.sources import source_from_checkpoint
from tests.dicom_support import write_dicom_series
from tests.pipeline.export.support import IMAGE_SIZE, NETWORK, ROOT, phantom_slices

CONFIGS = ROOT / "bundle" / "configs"
CONSUMER = """
import atexit, importlib.util, json, runpy, sys
for name in ("networks", "transforms"):
    if importlib.util.find_spec(name) is not None:
        raise SystemExit(f"{{name}} is importable: the consumer is not isolated from the repository")

def inventory():
    files = [getattr(m, "__file__", None) or "" for m in list(sys.modules.values())]
    print(json.dumps({{
        "repository": [f for f in files if f.startswith({repo!r}) and "/.venv/" not in f],
        "scripts": getattr(sys.modules.get("scripts"), "__file__", None),
    }}))

atexit.register(inventory)
sys.argv = ["monai.bundle", "run", "--config_file", {config!r}, "--bundle_root", {bundle!r},
            "--dataset_dir", {data!r}, "--output_dir", {out!r}]
runpy.run_module("monai.bundle", run_name="__main__", alter_sys=True)
"""


def _grid_affine(spacing, origin=(0.0, 0.0, 0.0)) -> np.ndarray:
    """The training layout (columns right->left, rows anterior->posterior), RAS affine."""
    affine = np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])
    affine[:3, 3] = origin
    return affine


def _clinical_patients(data: Path, phantom: Path) -> None:
    """(b) and (c) from the phantom's channels (k, j, i), so that the masks are not trivial."""
    files = [f for f in phantom.glob("*/*.tif") if not f.stem.endswith("_mask")]
    files = sorted(files, key=lambda p: int(p.stem.rsplit("_", 1)[1]))[4:16]
    volume = np.stack([tifffile.imread(f) for f in files])[:, ::2, ::2]  # (k, j, i, channel), 128 px
    t1, flair, t1c = (np.ascontiguousarray(volume[..., c]) for c in range(3))
    ijk = lambda kji: np.ascontiguousarray(kji.transpose(2, 1, 0))  # noqa: E731
    nifti = data / "P2_nifti"
    nifti.mkdir(parents=True)
    nib.save(nib.Nifti1Image(ijk(flair), _grid_affine((1.8, 1.8, 3.0))), nifti / "P2_flair.nii.gz")
    # T1 on a coarser grid, the post-contrast T1 on a finer one shifted by 2 mm
    nib.save(nib.Nifti1Image(ijk(t1[:, ::2, ::2]), _grid_affine((3.6, 3.6, 3.0))), nifti / "P2_t1.nii.gz")
    t1c_fine = np.repeat(t1c, 2, axis=0)[:, :100, :100]
    affine = _grid_affine((1.8, 1.8, 1.5), origin=(-2.0, 0.0, 0.0))
    nib.save(nib.Nifti1Image(ijk(t1c_fine), affine), nifti / "P2_t1ce.nii.gz")
    dicom = data / "P3_dicom"
    study, frame = pydicom.uid.generate_uid(), pydicom.uid.generate_uid()
    common = {"study_uid": study, "frame_of_reference_uid": frame, "patient_id": "P3"}
    t1_12bit, flair_12bit = t1.astype(np.uint16) * 16, flair.astype(np.uint16) * 16
    common.update(spacing=(1.8, 1.8, 3.0), bits=12)
    write_dicom_series(dicom / "FLAIR", flair_12bit, **common)  # description "AX FLAIR"
    write_dicom_series(dicom / "T1", t1_12bit, description="AX T1 SE", series_number=2, **common)


@pytest.fixture(scope="module")
def setting(tmp_path_factory):
    """The dataset (a, b, c), the run folder of the model and the bundle exported from it."""
    from pipeline.data.phantom import generate_dataset

    root = tmp_path_factory.mktemp("exported")
    phantom = generate_dataset(root / "phantom", n_patients=1, seed=3, workers=1)
    data = root / "data"
    patient = next(p for p in phantom.iterdir() if p.is_dir())
    shutil.copytree(patient, data / patient.name)
    _clinical_patients(data, phantom)

    run = root / "runs" / "unet-tiny"
    (run / "models").mkdir(parents=True)
    torch.manual_seed(0)
    network = UNet(**{k: v for k, v in NETWORK.items() if k != "_target_"}).eval()
    with torch.no_grad():
        logits = network(phantom_slices(phantom))
        network.head.bias -= torch.quantile(logits.flatten()[::7], 0.8)
    torch.save(network.state_dict(), run / "models" / "model.pt")
    config = json.loads((CONFIGS / "train.json").read_text())
    config.update(network_def=NETWORK, image_size=IMAGE_SIZE, bundle_root=str(root), epochs=2)
    (run / "config.json").write_text(json.dumps(config))
    dice = {"threshold": 0.6, "tta": 0.7, "tta+lcc": 0.72}
    summary = {"n_patients": 2, "aggregates": {option: {"dice": {"mean": v}} for option, v in dice.items()}}
    (run / "evaluation").mkdir()
    (run / "evaluation" / "summary.json").write_text(json.dumps(summary))
    started = time.perf_counter()
    bundle, archive = export_bundle(
        source_from_checkpoint(run / "models" / "model.pt"), root / "export" / "lgg"
    )
    print(f"export: {time.perf_counter() - started:.1f} s, zip {archive.stat().st_size / 1e6:.2f} MB")
    return {"root": root, "data": data, "run": run, "bundle": bundle, "archive": archive}


def _consumer(setting: dict, out: Path) -> dict:
    """The unzipped bundle run by ``python -m monai.bundle`` in a Python without this repository."""
    received = setting["root"] / "received"
    if not received.exists():
        shutil.unpack_archive(setting["archive"], received)
    bundle = received / setting["bundle"].name
    elsewhere = setting["root"] / "elsewhere"
    for decoy in ("scripts", "pipeline"):  # the working directory's own packages must not be used
        (elsewhere / decoy).mkdir(parents=True, exist_ok=True)
        (elsewhere / decoy / "__init__.py").write_text(
            f"raise ImportError('the working directory {decoy}')\n"
        )
    code = CONSUMER.format(
        repo=str(ROOT) + "/",
        config=str(bundle / "configs" / "inference.json"),
        bundle=str(bundle),
        data=str(setting["data"]),
        out=str(out),
    )
    drop = ("PYTHONPATH", "PYTHONHOME", "PYTHONDONTWRITEBYTECODE")  # Python as a team runs it
    environment = {k: v for k, v in os.environ.items() if k not in drop}
    environment.update(PYTHONPATH=sysconfig.get_paths()["purelib"], PYTHONNOUSERSITE="1")
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-S", "-s", "-c", code],
        cwd=elsewhere,
        env=environment,
        capture_output=True,
        text=True,
        timeout=600,
    )
    print(f"bundle run: {time.perf_counter() - started:.1f} s")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return {"bundle": bundle, **json.loads(result.stdout.strip().splitlines()[-1])}


def _ours(setting: dict, options: dict, out: Path) -> None:
    """This project's inference.json on the same inputs and checkpoint, in this process."""
    from monai.bundle import ConfigWorkflow

    project = json.loads((CONFIGS / "inference.json").read_text())
    overrides = {k: v for k, v in options.items() if k in project}
    if isinstance(project.get("image_size"), int):  # an inference.json that does not read the run's settings
        overrides.update(image_size=IMAGE_SIZE, network_def=NETWORK)
    workflow = ConfigWorkflow(
        config_file=str(CONFIGS / "inference.json"),
        meta_file=str(CONFIGS / "metadata.json"),
        logging_file=False,
        workflow_type="infer",
        ckpt_path=str(setting["run"] / "models" / "model.pt"),
        dataset_dir=str(setting["data"]),
        output_dir=str(out),
        **overrides,
    )
    started = time.perf_counter()
    workflow.initialize()
    workflow.run()
    workflow.finalize()
    print(f"project run: {time.perf_counter() - started:.1f} s")


def _masks(folder: Path) -> dict[str, np.ndarray]:
    out = {}
    for path in sorted(folder.rglob("*")):
        name = path.relative_to(folder).as_posix()
        if name.endswith("_mask.tif"):
            out[name] = tifffile.imread(path)
        elif name.endswith((".nii.gz", ".nii")):
            image = nib.load(path)
            out[name] = np.asarray(image.dataobj)
            out[name + "#affine"] = image.affine
        elif name.endswith("_seg.dcm"):
            out[name] = pydicom.dcmread(path).pixel_array
    return out


@pytest.mark.slow
def test_the_unzipped_bundle_segments_clinical_inputs_as_the_project_does(setting):
    theirs, ours = setting["root"] / "theirs", setting["root"] / "ours"
    run = _consumer(setting, theirs)
    assert run["repository"] == []  # nothing of the repository was imported
    assert run["scripts"] == str(run["bundle"] / "scripts" / "__init__.py")  # the bundle's own code
    inference = json.loads((run["bundle"] / "configs" / "inference.json").read_text())
    meta = json.loads((run["bundle"] / "configs" / "metadata.json").read_text())
    assert meta["postprocessing"]["option"] == "tta+lcc"  # summary.json: the best per-volume Dice
    options = {k: inference[k] for k in ("tta", "largest_component") if k in inference}
    assert options == {"tta": True, "largest_component": True}
    _ours(setting, options, ours)

    written = sorted(p.relative_to(ours).as_posix() for p in ours.rglob("*") if p.is_file())
    assert written == sorted(p.relative_to(theirs).as_posix() for p in theirs.rglob("*") if p.is_file())
    expected, got = _masks(ours), _masks(theirs)
    volumes = [n for n in expected if n.endswith("_mask.nii.gz")]
    patient = next(p.name for p in setting["data"].iterdir() if p.name.startswith("TCGA"))
    assert sorted(volumes) == ["P2_nifti_mask.nii.gz", "P3_dicom_mask.nii.gz", f"{patient}_mask.nii.gz"]
    assert any(n.endswith("_seg.dcm") for n in expected), written  # the DICOM FLAIR gets a Segmentation
    for name, array in expected.items():
        np.testing.assert_array_equal(got[name], array, err_msg=name)
    for name in volumes:  # neither empty nor full: the comparison means something
        share = float((expected[name] > 0).mean())
        assert 0.01 < share < 0.6, (name, share)
    # running it left the bundle as verified (no bytecode cache written into scripts/)
    from pipeline.export.verify import verify_bundle

    assert verify_bundle(run["bundle"]) == []
    # the bundle's outputs name the bundle's model
    report = (theirs / "report.html").read_text()
    assert meta["name"] in report and inference["model_info"]["weights_sha256"] in report
    csv_ours = (ours / "lesion_volumes.csv").read_text()
    assert (theirs / "lesion_volumes.csv").read_text() == csv_ours
    rows = {row["input"]: row for row in csv.DictReader(io.StringIO(csv_ours))}
    assert (rows["P3_dicom"]["substituted"], rows["P2_nifti"]["substituted"]) == ("t1c", "")
    files = [Path(f).name for f in rows["P2_nifti"]["input_files"].split(";")]
    assert files == ["P2_t1.nii.gz", "P2_flair.nii.gz", "P2_t1ce.nii.gz"]  # three sequences on three grids
