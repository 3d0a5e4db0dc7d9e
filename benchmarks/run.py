"""Speed of the bundle against bare PyTorch and a tutorial-style peer, on one phantom dataset.

    .venv/bin/python benchmarks/run.py [--quick] [--out DIR]

All figures come from one process run on the same data, so the ratios are comparable even on a
shared, noisy machine (the absolute figures are not). The bundle's pieces are built the way
``python -m monai.bundle run training`` builds them: bundle/configs/train.json (plus demo.json
for the demo size) parsed with monai.bundle.ConfigParser, with only the paths and the lengths of
the timed runs overridden. Torch's thread count is left at its default, as the bundle leaves it.

Sections: 1 reading (files/s), 2 the training DataLoader alone (samples/s, from the cache),
3 training step time of the bundle's SupervisedTrainer vs a bare loop, 4 inference (slices/s),
5 a tutorial-style plain-PyTorch pipeline (benchmarks/tutorial_peer.py), then the targets of
docs/benchmarks.md. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import tifffile
import torch
from ignite.engine import Engine, Events

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script from anywhere: import the project's packages
    sys.path.insert(0, str(ROOT))

from monai.bundle import ConfigParser  # noqa: E402
from monai.data import ITKReader, PILReader  # noqa: E402
from monai.transforms import LoadImaged  # noqa: E402

from benchmarks.tutorial_peer import train_one_epoch, tutorial_loader  # noqa: E402
from pipeline.data.phantom import generate_dataset  # noqa: E402
from pipeline.training.memory import keep_freed_memory  # noqa: E402
from pipeline.training.runs import default_workers  # noqa: E402
from transforms import TiffReader  # noqa: E402

CONFIGS = ROOT / "bundle" / "configs"
TRAIN = [CONFIGS / "train.json"]
DEMO = [CONFIGS / "train.json", CONFIGS / "demo.json"]
TARGET_STEP_RATE = 0.95  # training step rate of the bundle / bare loop
TARGET_LOADER = 3.0  # loader samples/s / samples/s the full-size model consumes
TARGET_READER = 0.5  # our reader's files/s / bare tifffile's

results: dict[str, dict] = {}


def say(text: str = "") -> None:
    print(text, flush=True)


def record(section: str, **values: float | int | str) -> None:
    results.setdefault(section, {}).update(values)


def plain(x: torch.Tensor) -> torch.Tensor:
    """A plain tensor (no MetaTensor), contiguous and owned."""
    return (x.as_tensor() if hasattr(x, "as_tensor") else torch.as_tensor(x)).clone()


# -- data -----------------------------------------------------------------------------------------
def dataset(out: Path, patients: int) -> Path:
    data_dir = out / "phantom"
    if any(data_dir.glob("TCGA_*")):
        say(f"phantom: reusing {data_dir}")
        return data_dir
    start = time.perf_counter()
    generate_dataset(data_dir, n_patients=patients, seed=0)
    say(f"phantom: {patients} patients in {time.perf_counter() - start:.1f} s -> {data_dir}")
    return data_dir


def bundle_parser(files: list[Path], root: Path, data_dir: Path) -> ConfigParser:
    """train.json (+ overlay) with the paths pointed at the benchmark's folders.

    The trainer runs one epoch per run (section 3 sets its length). The ValidationHandler is
    dropped and TrainingProgress gets no evaluator, so the validation set is neither cached
    nor run; every other training handler (LR schedule, progress, checkpoints, MLflow) stays.
    All edits happen before anything is instantiated, so the trainer reuses the very
    DataLoader (and cache) that section 2 times.
    """
    parser = ConfigParser()
    parser.read_config([str(f) for f in files])
    parser.update(
        {
            "bundle_root": str(root),
            "dataset_dir": str(data_dir),
            "phantom_dir": str(data_dir),
            "show_progress": False,
            "train#trainer#max_epochs": 1,
        }
    )
    handlers = [h for h in parser["train#handlers"] if h.get("_target_") != "ValidationHandler"]
    for handler in handlers:
        if handler.get("_target_") == "pipeline.training.progress.TrainingProgress":
            handler["evaluator"] = None
    parser["train#handlers"] = handlers
    return parser


# -- 1. reading -----------------------------------------------------------------------------------
def bench_reading(records: list[dict], rounds: int) -> None:
    say(f"\n== 1. reading: files/s over the same slice+mask files (best of {rounds} rounds) ==")
    files = [r[k] for r in records for k in ("image", "label")]
    loaders: dict[str, Callable[[], None]] = {}
    for name, reader in (
        ("TiffReader (ours)", TiffReader),
        ("ITKReader", ITKReader),
        ("PILReader", PILReader),
    ):
        # dtype None, as the bundle loads: the stored uint8, like bare tifffile (ScaleIntensityd
        # and LesionMaskd make the float32 arrays the network sees)
        load = LoadImaged(keys=["image", "label"], reader=reader(), image_only=True, dtype=None)
        loaders[name] = lambda load=load: [load(r) for r in records]
    loaders["bare tifffile.imread"] = lambda: [tifffile.imread(f) for f in files]
    best = dict.fromkeys(loaders, 0.0)
    for _ in range(rounds):  # interleaved rounds: a noisy neighbour hits every reader alike
        for name, run in loaders.items():
            start = time.perf_counter()
            run()
            best[name] = max(best[name], len(files) / (time.perf_counter() - start))
    for name, rate in best.items():
        say(f"  {name:22s} {rate:8.0f} files/s")
    ratio = best["TiffReader (ours)"] / best["bare tifffile.imread"]
    say(f"  ours / bare tifffile: {ratio:.2f}")
    record("reading", files=len(files), **{k: round(v, 1) for k, v in best.items()}, ratio=ratio)


# -- 2. loader alone ------------------------------------------------------------------------------
def bench_loader(parser: ConfigParser, label: str, epochs: int) -> float:
    start = time.perf_counter()
    loader = parser.get_parsed_content("train#dataloader")
    built = time.perf_counter() - start
    n = len(loader.dataset)
    say(
        f"  [{label}] built train#dataloader, {n} slices cached in {built:.1f} s ({n / built:.0f} slices/s); "
        f"batch {loader.batch_size}, num_workers {loader.num_workers}"
    )
    rates = []
    for epoch in range(epochs):
        start, samples = time.perf_counter(), 0
        for batch in loader:
            samples += batch["image"].shape[0]
        rates.append(samples / (time.perf_counter() - start))
        say(f"  [{label}] epoch {epoch + 1}: {rates[-1]:.0f} samples/s ({type(batch['image']).__name__})")
    record(f"loader {label}", cache_seconds=built, slices=n, samples_per_s=rates[-1])
    return rates[-1]


def bench_augmentation(parser: ConfigParser, rounds: int) -> None:
    """Per-sample cost of the bundle's ``augmentations`` list on cached slices, four ways.

    MONAI's Compose (MetaTensors, what a plain bundle would use), ComposeWithoutMeta (the same
    transforms, metadata off) and FusedAugmentation (one resampling), each item by item, and
    BatchAugmentation (train.json's collate_fn: the batch resampled at once, batches of
    ``batch_size``, collation included). Each gets fresh transform objects seeded alike; in
    this process, with torch's default threads.
    """
    from monai.transforms import Compose

    from transforms import BatchAugmentation, ComposeWithoutMeta, FusedAugmentation

    cache = parser.get_parsed_content("train#dataloader").dataset._cache[:64]
    size = parser.get_parsed_content("batch_size")
    batches = [cache[i : i + size] for i in range(0, len(cache) - size + 1, size)]
    best: dict[str, float] = {}
    for _ in range(rounds):
        for name, kind in (
            ("MONAI Compose", Compose),
            ("ComposeWithoutMeta", ComposeWithoutMeta),
            ("FusedAugmentation", FusedAugmentation),
            (f"BatchAugmentation (ours, {size}/batch)", BatchAugmentation),
        ):
            chain = kind(parser.get_parsed_content("augmentations", lazy=False))
            chain.set_random_state(seed=0)
            start = time.perf_counter()
            if kind is BatchAugmentation:
                for batch in batches:
                    chain(batch)
                per_sample = (time.perf_counter() - start) / (len(batches) * size)
            else:
                for item in cache:
                    chain(dict(item))
                per_sample = (time.perf_counter() - start) / len(cache)
            best[name] = min(best.get(name, per_sample), per_sample)
    for name, seconds in best.items():
        say(f"  {name:34s} {seconds * 1e3:6.2f} ms per sample")
    ours = best[f"BatchAugmentation (ours, {size}/batch)"]
    ratio = best["MONAI Compose"] / ours
    say(f"  MONAI Compose / BatchAugmentation: {ratio:.1f}x")
    record("augmentation", **{k: v * 1e3 for k, v in best.items()}, speedup=ratio)


# -- 3. training ----------------------------------------------------------------------------------
class BareLoop:
    """A fresh copy of the bundle's network, loss and SGD, stepping on one batch held in memory."""

    def __init__(self, parser: ConfigParser, image: torch.Tensor, label: torch.Tensor) -> None:
        torch.manual_seed(0)
        self.network = parser.get_parsed_content("network_def", lazy=False).train()  # a fresh instance
        self.loss_function = parser.get_parsed_content("loss")
        # the trainer's first steps run at OneCycleLR's starting rate, max_lr / 25
        self.optimizer = torch.optim.SGD(
            self.network.parameters(),
            lr=parser.get_parsed_content("learning_rate") / 25,
            momentum=parser.get_parsed_content("momentum"),
        )
        self.image, self.label = image, label

    def steps(self, n: int) -> list[float]:
        times = []
        for _ in range(n):
            start = time.perf_counter()
            self.optimizer.zero_grad()
            loss = self.loss_function(self.network(self.image), self.label)
            loss.backward()
            self.optimizer.step()
            times.append(time.perf_counter() - start)
        return times


class TrainerClock:
    """Per-iteration and batch-wait seconds of a trainer, and the seconds of its last epoch.

    An iteration's time is the interval between two ITERATION_COMPLETED events (the first one of
    an epoch starts at EPOCH_STARTED): the batch fetch, the step and every handler.
    """

    def __init__(self, trainer: Engine) -> None:
        self.stamps: list[float] = []
        self.waits: list[float] = []
        self._fetch = 0.0
        trainer.add_event_handler(Events.EPOCH_STARTED, lambda _: setattr(self, "stamps", [self.now()]))
        trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda _: self.stamps.append(self.now()))
        trainer.add_event_handler(Events.GET_BATCH_STARTED, lambda _: setattr(self, "_fetch", self.now()))
        trainer.add_event_handler(
            Events.GET_BATCH_COMPLETED, lambda _: self.waits.append(self.now() - self._fetch)
        )

    @staticmethod
    def now() -> float:
        return time.perf_counter()

    def run(self, trainer: Engine, iterations: int) -> tuple[list[float], list[float], float]:
        """One epoch of ``iterations`` (ignite's Engine.run with epoch_length: MONAI's Workflow.run
        would take the loader's length on a second run); returns iteration and wait seconds, and
        the epoch's seconds."""
        self.waits = []
        trainer.state.max_epochs = trainer.state.max_iters = None  # a new run, not a resume
        Engine.run(trainer, trainer.data_loader, max_epochs=1, epoch_length=iterations)
        steps = [b - a for a, b in zip(self.stamps, self.stamps[1:])]
        return steps, self.waits, self.stamps[-1] - self.stamps[0]


def bench_training(
    parser: ConfigParser, label: str, rounds: int, per_round: int
) -> tuple[dict[str, float], Callable[[], float]]:
    """Alternate ``rounds`` blocks of ``per_round`` bare steps and ``per_round`` trainer iterations.

    Returns the figures and a function that runs the trainer for one whole epoch and returns
    its seconds (section 5 alternates it with the peer's epochs); the caller closes the
    trainer's MLflow handler when done with it.

    Alternating keeps a noisy neighbour from favouring one side. The first trainer iteration of
    each block (a new loader iterator: the first batch is not prefetched) and one bare warm-up
    step are not counted.
    """
    loader = parser.get_parsed_content("train#dataloader")
    batch = next(iter(loader))
    image, mask = plain(batch["image"]), plain(batch["label"])
    bare = BareLoop(parser, image, mask)
    trainer = parser.get_parsed_content("train#trainer")
    clock = TrainerClock(trainer)
    bare.steps(1)
    bare_times, trainer_times, waits = [], [], []
    for _ in range(rounds):
        bare_times += bare.steps(per_round)
        steps, block_waits, _ = clock.run(trainer, per_round + 1)
        trainer_times += steps[1:]
        waits += block_waits[1:]
    # medians: a step that a noisy neighbour stretched (seen here: single steps 2x the others)
    # moves a mean of 24 by several percent, a median not; the means are printed too
    bare_s, ours = statistics.median(bare_times), statistics.median(trainer_times)
    ratio = bare_s / ours
    mean_ratio = statistics.mean(bare_times) / statistics.mean(trainer_times)
    say(
        f"  [{label}] batch {tuple(image.shape)}, {rounds} alternating rounds, median: "
        f"bare loop {bare_s:.3f} s/step ({len(bare_times)} steps), bundle trainer {ours:.3f} s/step "
        f"({len(trainer_times)} iterations, of which waiting for the batch {statistics.median(waits):.4f} s)"
    )
    say(f"  [{label}] step rate trainer / bare: {ratio:.3f} (ratio of the means: {mean_ratio:.3f})")
    values = {
        "bare_s_per_step": bare_s,
        "trainer_s_per_step": ours,
        "trainer_batch_wait_s": statistics.median(waits),
        "ratio": ratio,
        "ratio_of_means": mean_ratio,
        "batch_size": image.shape[0],
    }
    record(f"training {label}", **values)
    return values, lambda: clock.run(trainer, len(loader))[2]


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


# -- 5. the tutorial-style peer ---------------------------------------------------------------------
def bench_peer(parser: ConfigParser, ours_epoch: Callable[[], float], rounds: int) -> None:
    """The peer's epochs and the bundle trainer's, alternated ``rounds`` times; medians."""
    data = parser.get_parsed_content("data")
    size = parser.get_parsed_content("image_size")
    batch_size = parser.get_parsed_content("batch_size")
    # the tutorial reads and augments in worker processes: give the peer its best setting (the
    # bundle's CPU default, 0 workers, leaves the cheap cached augmentation in the main process)
    workers = default_workers()
    ours_workers = parser.get_parsed_content("num_workers")
    loader = tutorial_loader(data.train, data.weights, size, batch_size, workers)
    start, samples = time.perf_counter(), 0
    for batch in loader:
        samples += batch["image"].shape[0]
    alone = samples / (time.perf_counter() - start)
    torch.manual_seed(0)
    network = parser.get_parsed_content("network_def", lazy=False)  # a fresh instance
    optimizer = torch.optim.SGD(
        network.parameters(),
        lr=parser.get_parsed_content("learning_rate"),
        momentum=parser.get_parsed_content("momentum"),
    )
    loss = parser.get_parsed_content("loss")
    peer_times, ours_times = [], []
    for _ in range(rounds):
        seconds, samples = train_one_epoch(network, loss, optimizer, loader)
        peer_times.append(seconds)
        ours_times.append(ours_epoch())
    peer_s, ours_s = statistics.median(peer_times), statistics.median(ours_times)
    ours_loader = results["loader demo"]["samples_per_s"]
    cache = results["loader demo"]["cache_seconds"]
    say(
        f"  peer loader alone (read + augment per item, no cache): {alone:.0f} samples/s "
        f"vs ours {ours_loader:.0f}"
    )
    say(
        f"  one training epoch, {samples} samples, batch {batch_size}, {rounds} alternating rounds, "
        f"median: peer ({workers} worker(s)) {peer_s:.1f} s, ours ({ours_workers} worker(s)) "
        f"{ours_s:.1f} s (plus {cache:.1f} s to fill the cache once) "
        f"-> ours is {peer_s / ours_s:.2f}x as fast per epoch"
    )
    each = "; ".join(f"peer {p:.1f} / ours {o:.1f}" for p, o in zip(peer_times, ours_times))
    say(f"  (each round, s: {each})")
    record(
        "peer",
        loader_samples_per_s=alone,
        epoch_s=peer_s,
        samples=samples,
        ours_epoch_s=ours_s,
        ours_cache_s=cache,
        speedup=peer_s / ours_s,
    )


# -- main -----------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer files, patients and steps (~3 min)")
    parser.add_argument("--out", type=Path, default=None, help="folder for the data and outputs (kept)")
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
        bench_inference(out / "bundle", data_dir, patients=1 if quick else 2)

        say("\n== 5. tutorial-style plain-PyTorch peer (benchmarks/tutorial_peer.py), demo size ==")
        bench_peer(demo, demo_epoch, rounds=1 if quick else 3)
        demo.get_parsed_content("mlflow_tracking").close()

        consumed_full = train_full["batch_size"] / train_full["bare_s_per_step"]
        consumed_demo = train_demo["batch_size"] / train_demo["bare_s_per_step"]
        checks = [
            ("training step rate, demo size (trainer / bare)", train_demo["ratio"], TARGET_STEP_RATE),
            ("training step rate, full size (trainer / bare)", train_full["ratio"], TARGET_STEP_RATE),
            ("loader alone / model's consumption, full size", loader_full / consumed_full, TARGET_LOADER),
            ("reader (ours / bare tifffile)", results["reading"]["ratio"], TARGET_READER),
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
