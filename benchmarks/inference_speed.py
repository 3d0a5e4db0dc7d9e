"""Section 4: inference.json's evaluator against a bare forward of the same network."""

from __future__ import annotations

import time
from pathlib import Path

import torch
from monai.bundle import ConfigParser

from benchmarks.common import CONFIGS, record, say


# -- 4. inference ---------------------------------------------------------------------------------
def bench_inference(root: Path, data_dir: Path, patients: int) -> None:
    subset = root / "inference_input"
    subset.mkdir(parents=True, exist_ok=True)
    for folder in sorted(data_dir.glob("TCGA_*"))[:patients]:
        link = subset / folder.name
        if not link.exists():
            link.symlink_to(folder, target_is_directory=True)
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "inference.json"))
    parser.update(
        {
            "bundle_root": str(root),
            "dataset_dir": str(subset),
            "output_dir": str(root / "inference_output"),
            "image_size": 128,
            "network_def#n_filters": 3,
            "network_def#dropout": 0.1,
            "network": "$@network_def.to(@device)",  # untrained weights: the speed is the same
        }
    )
    evaluator = parser.get_parsed_content("evaluator")
    slices = sum(inp.n_slices for inp in parser.get_parsed_content("inputs"))
    start = time.perf_counter()
    evaluator.run()
    ours = slices / (time.perf_counter() - start)
    network = parser.get_parsed_content("network").eval()
    batch_size = parser.get_parsed_content("batch_size")
    images = torch.rand(batch_size, 3, 128, 128)
    with torch.no_grad():
        network(images)
        start = time.perf_counter()
        for first in range(0, slices, batch_size):
            network(images[: min(batch_size, slices - first)])
    bare = slices / (time.perf_counter() - start)
    say(
        f"  inference.json (demo network, 128 px, batch {batch_size}), {slices} slices of {patients} "
        f"patients, read + preprocess + predict + write masks: {ours:.1f} slices/s"
    )
    say(f"  bare forward of the same network on in-memory tensors: {bare:.1f} slices/s")
    say(f"  bundle / bare: {ours / bare:.2f}")
    record("inference", slices=slices, bundle_slices_per_s=ours, bare_slices_per_s=bare, ratio=ours / bare)
