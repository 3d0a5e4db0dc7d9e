"""Speed of the bundle against bare PyTorch and a tutorial-style peer, on one phantom dataset.

    .venv/bin/python benchmarks/run.py [--quick] [--out DIR]

All figures come from one process run on the same data, so the ratios are comparable even on a
shared, noisy machine (the absolute figures are not). The bundle's pieces are built the way
``python -m monai.bundle run training`` builds them: bundle/configs/train.json (plus demo.json
for the demo size) parsed with monai.bundle.ConfigParser, with only the paths and the lengths of
the timed runs overridden. Torch's thread count is left at its default, as the bundle leaves it.

Sections: 1 reading (files/s), 2 the training DataLoader alone (samples/s, from the cache),
3 training step time of the bundle's SupervisedTrainer vs a bare loop, 4 inference (slices/s, demo
and full network), 5 a tutorial-style plain-PyTorch pipeline (benchmarks/tutorial_peer.py),
6 clinical inference (seconds per three-sequence NIfTI patient with and without TTA, peak memory;
benchmarks/clinical_speed.py), then the targets of
docs/benchmarks.md. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script from anywhere: import the project's packages
    sys.path.insert(0, str(ROOT))

from benchmarks.clinical_speed import bench_clinical  # noqa: E402
from benchmarks.common import (  # noqa: E402
    DEMO,
    TARGET_INFERENCE_DEMO,
    TARGET_INFERENCE_FULL,
    TARGET_LOADER,
    TARGET_READER,
    TARGET_STEP_RATE,
    TRAIN,
    bundle_parser,
    dataset,
    record,
    results,
    say,
)
from benchmarks.data_speed import bench_augmentation, bench_loader, bench_reading  # noqa: E402
from benchmarks.inference_speed import bench_inference  # noqa: E402
from benchmarks.training_speed import bench_peer, bench_training  # noqa: E402
from pipeline.training.memory import keep_freed_memory  # noqa: E402


# -- main -----------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer files, patients and steps (~3 min)")
    parser.add_argument("--out", type=Path, default=None, help="folder for the data and outputs (kept)")
    parser.add_argument(
        "--only-inference",
        action="store_true",
        help="section 4 alone (demo and full size; a short measurement without the rest)",
    )
    parser.add_argument(
        "--demo-weights",
        type=Path,
        default=None,
        help="with --only-inference: a state dict (a demo run's model.pt) for the demo network; "
        "default: seeded untrained weights",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore")
    quick = args.quick
    with tempfile.TemporaryDirectory(prefix="lgg-bench-") as tmp:
        out = (args.out or Path(tmp)).resolve()
        out.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        tuned = keep_freed_memory()  # as train.json's initialize does; the bare loop gains alike
        say(
            f"torch {torch.__version__}, {torch.get_num_threads()} intra-op threads (the bundle's default), "
            f"{'quick' if quick else 'full'} run, freed memory kept (pipeline.training.memory): {tuned}"
        )
        data_dir = dataset(out, 6 if quick else 10)
        if args.only_inference:
            say("\n== 4. inference: inference.json evaluator vs bare forward ==")
            weights = None
            if args.demo_weights is not None:
                weights = torch.load(args.demo_weights, map_location="cpu", weights_only=True)
            bench_inference(out / "bundle", data_dir, patients=2 if quick else 6, weights=weights)
            bench_inference(out / "bundle", data_dir, patients=1, size="full")
            say(f"\ntotal {time.perf_counter() - started:.0f} s")
            return 0
        demo = bundle_parser(DEMO, out / "bundle", data_dir)
        records = demo.get_parsed_content("data").train
        bench_reading(records[: 100 if quick else 200], rounds=2 if quick else 3)

        say("\n== 2. training DataLoader alone (train#dataloader, augmentation from the cache) ==")
        loader_demo = bench_loader(demo, "demo", epochs=2)
        say("  augmentation alone, best of 3 rounds over 64 cached demo slices:")
        bench_augmentation(demo, rounds=3)
        full = bundle_parser(TRAIN, out / "bundle", data_dir)
        loader_full = bench_loader(full, "full", epochs=1 if quick else 2)

        say("\n== 3. training step: bundle SupervisedTrainer (data from the cached loader) vs bare loop ==")
        say("  (ValidationHandler dropped; trainer time = interval between ITERATION_COMPLETED events)")
        train_demo, demo_epoch = bench_training(
            demo, "demo", rounds=3 if quick else 8, per_round=3 if quick else 4
        )
        train_full, _ = bench_training(full, "full", rounds=1 if quick else 2, per_round=1)
        full.get_parsed_content("mlflow_tracking").close()

        say("\n== 4. inference: inference.json evaluator vs bare forward ==")
        # the demo network section 3 trained for a few steps: masks like a model's, not all or nothing
        trained = {k: v.detach().clone() for k, v in demo.get_parsed_content("network").state_dict().items()}
        infer_demo = bench_inference(out / "bundle", data_dir, patients=2 if quick else 6, weights=trained)
        infer_full = bench_inference(out / "bundle", data_dir, patients=1, size="full")

        say("\n== 5. tutorial-style plain-PyTorch peer (benchmarks/tutorial_peer.py), demo size ==")
        bench_peer(demo, demo_epoch, rounds=1 if quick else 3)
        demo.get_parsed_content("mlflow_tracking").close()

        say("\n== 6. clinical inference: three-sequence NIfTI patients, one process per run ==")
        bench_clinical(out / "clinical")

        consumed_full = train_full["batch_size"] / train_full["bare_s_per_step"]
        consumed_demo = train_demo["batch_size"] / train_demo["bare_s_per_step"]
        checks = [
            ("training step rate, demo size (trainer / bare)", train_demo["ratio"], TARGET_STEP_RATE),
            ("training step rate, full size (trainer / bare)", train_full["ratio"], TARGET_STEP_RATE),
            ("loader alone / model's consumption, full size", loader_full / consumed_full, TARGET_LOADER),
            ("reader (ours / bare tifffile)", results["reading"]["ratio"], TARGET_READER),
            ("inference.json / bare forward, demo size", infer_demo, TARGET_INFERENCE_DEMO),
            ("inference.json / bare forward, full size", infer_full, TARGET_INFERENCE_FULL),
        ]
        say("\n== targets (docs/benchmarks.md) ==")
        for name, value, target in checks:
            verdict = "met" if value >= target else "MISSED"
            say(f"  {name:50s} {value:8.2f}  target >= {target:<5g} {verdict}")
        say(
            f"  (info) loader alone / model's consumption, demo size: {loader_demo / consumed_demo:.2f} "
            f"({loader_demo:.0f} vs {consumed_demo:.1f} samples/s)"
        )
        record("targets", **{name: value for name, value, _ in checks})
        total = time.perf_counter() - started
        say(f"\ntotal {total:.0f} s")
        (out / "results.json").write_text(json.dumps(results, indent=2, sort_keys=True, default=float))
        if args.out:
            say(f"results in {out / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
