"""Sections 3 and 5: the training step against a bare loop, one epoch against a tutorial-style peer."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch
from ignite.engine import Engine, Events
from monai.bundle import ConfigParser

from benchmarks.common import plain, record, results, say
from benchmarks.tutorial_peer import train_one_epoch, tutorial_loader
from pipeline.training.runs import default_workers


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
