"""Constants and helpers shared by the test packages (fixtures are in ``tests/conftest.py``).

Test modules import from here, never from each other.
"""

from __future__ import annotations

import math
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "bundle" / "configs"

# the tiny recipe of the bundle tests: 4 phantom patients at 64 px, a 2-filter U-Net of depth 3
TINY = {
    "epochs": 2,
    "image_size": 64,
    "phantom_patients": 4,
    "network_def#n_filters": 2,
    "network_def#depth": 3,
    "num_workers": 0,
    "show_progress": False,
    "batch_size": 4,
    "val_batch_size": 8,
}


def bundle_workflow(tmp_path: Path, **overrides):
    """train.json with TINY and ``overrides`` as MONAI's ConfigWorkflow (not initialized yet)."""
    from monai.bundle import ConfigWorkflow

    return ConfigWorkflow(
        config_file=str(CONFIGS / "train.json"),
        meta_file=str(CONFIGS / "metadata.json"),
        logging_file=False,
        workflow_type="train",
        **dict(TINY, bundle_root=str(tmp_path), **overrides),
    )


def run_bundle(tmp_path: Path, **overrides):
    """train.json with TINY and ``overrides`` through MONAI's ConfigWorkflow, in this process:
    initialize -> check_properties() == [] -> run -> finalize. Returns the workflow."""
    from pipeline.tracking.provenance import record_workflow_config

    workflow = bundle_workflow(tmp_path, **overrides)
    workflow.initialize()
    assert workflow.check_properties() == []
    record_workflow_config(workflow)  # a workflow built in Python has no command line to record
    workflow.run()
    workflow.finalize()
    return workflow


def bundle_command(bundle_root: Path, *overlays: str, **overrides) -> list[str]:
    """The ``python -m monai.bundle run training`` command line of train.json (plus ``overlays``)
    with TINY and ``overrides`` (booleans written as ``true``/``false``)."""
    configs = [str(CONFIGS / "train.json"), *(str(CONFIGS / o) for o in overlays)]
    config_arg = configs[0] if len(configs) == 1 else "[" + ",".join(repr(c) for c in configs) + "]"
    args = [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", config_arg]
    for key, value in dict(TINY, bundle_root=str(bundle_root), **overrides).items():
        args += [f"--{key}", str(value).lower() if isinstance(value, bool) else str(value)]
    return args


def one_cycle_lr(step: int, total: int, max_lr: float) -> float:
    """OneCycleLR's documented defaults: cosine, 30% warm-up from max_lr/25, down to max_lr/25/1e4."""
    initial, final = max_lr / 25, max_lr / 25 / 1e4
    up_end = 0.3 * total - 1
    if step <= up_end:
        pct, start, end = step / up_end, initial, max_lr
    else:
        pct, start, end = (step - up_end) / (total - 1 - up_end), max_lr, final
    return end + (start - end) / 2 * (1 + math.cos(math.pi * pct))


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until_up(
    url: str,
    process: subprocess.Popen,
    log: Path,
    seconds: float = 90,
    path: str = "/health",
    what: str = "mlflow server",
) -> None:
    """Wait for a server at ``url`` to answer ``path`` with 200 (``mlflow server``: /health,
    ``mlflow models serve``: /ping); raise with its log if it dies or does not come up."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url + path, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"{what} not up after {seconds} s:\n{log.read_text()[-3000:]}")


def world_of_one_workflow(monkeypatch, bundle_root: Path, **overrides):
    """train.json + multi_gpu_train.json as a ConfigWorkflow in a torchrun-like world of one process."""
    from monai.bundle import ConfigWorkflow

    env = {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1"}
    for name, value in dict(env, MASTER_PORT=str(free_port())).items():
        monkeypatch.setenv(name, value)
    return ConfigWorkflow(
        config_file=[str(CONFIGS / "train.json"), str(CONFIGS / "multi_gpu_train.json")],
        meta_file=str(CONFIGS / "metadata.json"),
        logging_file=False,
        workflow_type="train",
        **dict(TINY, bundle_root=str(bundle_root), **overrides),
    )


def run_isolated(code: str, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    """``code`` in a Python that cannot import this repository: ``-I`` (no cwd, no PYTHONPATH, no
    user site) and ``-S`` (no site-packages .pth files, so not the editable install), with
    PYTHONPATH and PYTHONHOME removed from the environment and ``env`` added."""
    environment = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    return subprocess.run(
        [sys.executable, "-I", "-S", "-c", code],
        cwd=cwd,
        env={**environment, **env},
        capture_output=True,
        text=True,
        timeout=300,
    )
