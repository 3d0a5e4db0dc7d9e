"""Sections 1 and 2: reading files, and the training DataLoader and its augmentation alone."""

from __future__ import annotations

import time
from collections.abc import Callable

import tifffile
from monai.bundle import ConfigParser
from monai.data import ITKReader, PILReader
from monai.transforms import LoadImaged

from benchmarks.common import record, say
from transforms import TiffReader


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
