"""Section 4: inference.json's evaluator against a bare forward of the same network."""

from __future__ import annotations

import csv
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from monai.bundle import ConfigParser

from benchmarks.common import CONFIGS, record, say


# -- 4. inference ---------------------------------------------------------------------------------
def bench_inference(
    root: Path, data_dir: Path, patients: int, size: str = "demo", weights: dict | None = None
) -> float:
    """inference.json's slices/s against a bare forward; ``size`` "demo" (demo.json's network at
    128 px) or "full" (train.json's network at 256 px). Returns the ratio.

    ``weights``: a state dict for the network (the one section 3 trained for a few steps), so that
    the masks, and the writer's work, look like a model's; None: seeded untrained weights, whose
    masks are nearly empty or nearly full. The share of lesion voxels is printed either way."""
    subset = root / f"inference_input_{patients}"
    subset.mkdir(parents=True, exist_ok=True)
    for folder in sorted(data_dir.glob("TCGA_*"))[:patients]:
        link = subset / folder.name
        if not link.exists():
            link.symlink_to(folder, target_is_directory=True)
    settings = {"network_def#n_filters": 3, "network_def#dropout": 0.0}

    def parsed() -> ConfigParser:
        parser = ConfigParser()
        parser.read_config(str(CONFIGS / "inference.json"))
        parser.update(
            {
                "bundle_root": str(root),
                "dataset_dir": str(subset),
                "output_dir": str(root / f"inference_output_{size}"),
                **(settings if size == "demo" else {}),
                "image_size": 128 if size == "demo" else 256,
                "training_config": None,  # train.json's chain
                "model_info": None,  # no checkpoint to describe
                # untrained weights: the speed is the same
                "network": "$pipeline.training.model_settings.build_network(@network_def)[0].to(@device)",
            }
        )
        return parser

    parser = parsed()
    # every network seeded alike: the masks, and so the writer's work, are the same each round
    torch.manual_seed(0)
    side = parser.get_parsed_content("image_size")
    network = parser.get_parsed_content("network").eval()
    if weights is not None:
        network.load_state_dict(weights)
    batch_size = parser.get_parsed_content("batch_size")
    slices = sum(inp.n_slices for inp in parser.get_parsed_content("inputs"))
    images = torch.rand(batch_size, 3, side, side)

    def bare_seconds() -> float:
        with torch.no_grad():
            start = time.perf_counter()
            for first in range(0, slices, batch_size):
                network(images[: min(batch_size, slices - first)])
        return time.perf_counter() - start

    def bundle_seconds() -> float:
        torch.manual_seed(0)
        evaluator = parsed().get_parsed_content("evaluator")
        if weights is not None:
            evaluator.network.load_state_dict(weights)
        start = time.perf_counter()
        evaluator.run()
        return time.perf_counter() - start

    with torch.no_grad():
        network(images)  # warm-up
    # alternated, best of two each: a neighbour's load on a shared machine hits both alike
    bare_times, bundle_times = [], []
    for _ in range(2):
        bare_times.append(bare_seconds())
        bundle_times.append(bundle_seconds())
    ours, bare = slices / min(bundle_times), slices / min(bare_times)
    written = root / f"inference_output_{size}"
    with open(written / "lesion_volumes.csv") as table:
        lesion = sum(int(row["lesion_voxels"]) for row in csv.DictReader(table))
    voxels = sum(int(np.prod(nib.load(path).shape)) for path in written.glob("*_mask.nii.gz"))
    say(
        f"  inference.json ({size} network, {side} px, batch {batch_size}), {slices} slices of {patients} "
        f"patients, read + preprocess + predict + write masks: {ours:.1f} slices/s "
        f"({'partly trained' if weights is not None else 'untrained'} weights: "
        f"{lesion / voxels:.1%} of voxels lesion)"
    )
    say(f"  bare forward of the same network on in-memory tensors: {bare:.1f} slices/s")
    say(f"  bundle / bare: {ours / bare:.2f}")
    ratio = ours / bare
    record(f"inference_{size}", slices=slices, bundle_slices_per_s=ours, bare_slices_per_s=bare, ratio=ratio)
    return ratio
