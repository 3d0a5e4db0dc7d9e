"""What every benchmark section shares: the configs, the phantom data, the results and printing."""

from __future__ import annotations

import time
from pathlib import Path

import torch
from monai.bundle import ConfigParser

from pipeline.data.phantom import generate_dataset

ROOT = Path(__file__).resolve().parent.parent


CONFIGS = ROOT / "bundle" / "configs"
TRAIN = [CONFIGS / "train.json"]
DEMO = [CONFIGS / "train.json", CONFIGS / "demo.json"]
TARGET_STEP_RATE = 0.95  # training step rate of the bundle / bare loop
TARGET_LOADER = 3.0  # loader samples/s / samples/s the full-size model consumes
TARGET_READER = 0.5  # our reader's files/s / bare tifffile's
TARGET_INFERENCE_DEMO = 0.8  # inference.json's slices/s / a bare forward's, demo network
TARGET_INFERENCE_FULL = 0.95  # the same, full network

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
