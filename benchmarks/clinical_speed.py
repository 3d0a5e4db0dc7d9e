"""Section 6: clinical inference of inference.json, one process per run as a user runs it.

- seconds per patient for a 40-slice 256x256 patient given as three separate NIfTI sequences
  (BraTS names, uint16), the full network (train.json's, untrained weights: the speed is the
  same), with and without flip TTA, and the peak memory (RSS) of that process;
- the peak RSS of the demo-size network over a folder of 2 and of 8 such patients: inference
  reads one patient at a time, so the peak must not grow with the number of patients.

Each run is ``python -m monai.bundle run --config_file bundle/configs/inference.json`` in a child
process; its wall time includes start-up (imports, reading the config, building the network),
which is reported apart from the per-patient time (two patients against one).
"""

from __future__ import annotations

import functools
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from benchmarks.common import CONFIGS, ROOT, record, say
from networks import UNet

SLICES, SIDE = 40, 256
# the demo overlay's network (bundle/configs/demo.json)
DEMO_NETWORK = {"n_filters": 3, "dropout": 0.0}


def write_patient(folder: Path, seed: int) -> None:
    """Three uint16 NIfTI sequences of a head with a bright lesion, on FLAIR's grid (1 x 1 x 3 mm)."""
    rng = np.random.default_rng(seed)
    i, j, k = np.meshgrid(np.arange(SIDE), np.arange(SIDE), np.arange(SLICES), indexing="ij")
    head = ((i - 128) / 100.0) ** 2 + ((j - 128) / 120.0) ** 2 + ((k - 20) / 25.0) ** 2 < 1
    lesion = ((i - 150) / 18.0) ** 2 + ((j - 110) / 14.0) ** 2 + ((k - 22) / 5.0) ** 2 < 1
    affine = np.diag([-1.0, -1.0, 3.0, 1.0])
    folder.mkdir(parents=True, exist_ok=True)
    for name, gain in (("t1", 900.0), ("flair", 1200.0), ("t1ce", 1500.0)):
        bright = 1.8 if name == "flair" else 1.1
        data = head * (gain + rng.normal(0, 40, head.shape)) * np.where(lesion, bright, 1.0)
        image = nib.Nifti1Image(np.clip(data, 0, 65535).astype(np.uint16), affine)
        nib.save(image, folder / f"{folder.name}_{name}.nii.gz")


def weights(path: Path, overrides: dict) -> Path:
    """Untrained weights of train.json's network with ``overrides`` (the speed is the same)."""
    from pipeline.training.model_settings import build_network

    network = build_network(functools.partial(UNet, **overrides))[0]
    torch.save(network.state_dict(), path)
    return path


def run_inference(data: Path, ckpt: Path, out: Path, extra: list[str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (MiB) of one ``monai.bundle run`` of inference.json."""
    command = [
        sys.executable,
        "-m",
        "monai.bundle",
        "run",
        "--config_file",
        str(CONFIGS / "inference.json"),
        "--logging_file",
        str(CONFIGS / "logging.conf"),
        "--dataset_dir",
        str(data),
        "--ckpt_path",
        str(ckpt),
        "--output_dir",
        str(out),
        *extra,
    ]
    probe = (
        "import resource, subprocess, sys, time; t = time.perf_counter(); "
        "r = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
        "print(time.perf_counter() - t, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024); "
        "sys.stderr.write(r.stdout[-3000:] + r.stderr[-3000:] if r.returncode else ''); "
        "sys.exit(r.returncode)"
    )
    done = subprocess.run([sys.executable, "-c", probe, *command], capture_output=True, text=True, cwd=ROOT)
    if done.returncode:
        raise RuntimeError(f"inference failed:\n{done.stderr}")
    seconds, rss = done.stdout.split()
    return float(seconds), float(rss)


def bench_clinical(root: Path | None = None) -> None:
    with tempfile.TemporaryDirectory(prefix="lgg-clinical-") as tmp:
        base = Path(root or tmp)
        one, two = base / "one", base / "two"
        write_patient(one / "P001", 0)
        write_patient(two / "P001", 0)
        write_patient(two / "P002", 1)
        full = weights(base / "full.pt", {})
        figures: dict[str, float] = {}
        for tta in ("false", "true"):
            t1, rss = run_inference(one, full, base / f"out1-{tta}", ["--tta", tta])
            t2, _ = run_inference(two, full, base / f"out2-{tta}", ["--tta", tta])
            per_patient = t2 - t1
            say(
                f"  full network, {SLICES}x{SIDE}x{SIDE} three-sequence NIfTI patient, tta {tta}: "
                f"{per_patient:.1f} s per patient (start-up {t1 - per_patient:.1f} s), peak RSS {rss:.0f} MiB"
            )
            figures[f"s_per_patient_tta_{tta}"] = per_patient
            figures[f"startup_s_tta_{tta}"] = t1 - per_patient
            figures[f"peak_rss_mib_tta_{tta}"] = rss
        demo = weights(base / "demo.pt", DEMO_NETWORK)
        many = base / "many"
        for n in range(8):
            write_patient(many / f"P{n:03d}", n)
        few = base / "few"
        few.mkdir()
        for n in range(2):
            (few / f"P{n:03d}").symlink_to(many / f"P{n:03d}", target_is_directory=True)
        demo_args = ["--image_size", "128"]
        for key, value in DEMO_NETWORK.items():
            demo_args += [f"--network_def#{key}", str(value)]
        _, rss2 = run_inference(few, demo, base / "out-few", demo_args)
        _, rss8 = run_inference(many, demo, base / "out-many", demo_args)
        say(f"  demo network, peak RSS over 2 patients {rss2:.0f} MiB, over 8 patients {rss8:.0f} MiB")
        figures.update(
            peak_rss_mib_2_patients=rss2, peak_rss_mib_8_patients=rss8, rss_ratio_8_to_2=rss8 / rss2
        )
        record("clinical", **figures)


if __name__ == "__main__":
    started = time.perf_counter()
    bench_clinical(Path(sys.argv[1]) if len(sys.argv) > 1 else None)
    say(json.dumps({"seconds": round(time.perf_counter() - started, 1)}))
