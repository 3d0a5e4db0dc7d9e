"""keep_freed_memory: measured with the kernel's own page-fault count, in fresh processes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]

# per round, allocate and touch twenty 4 MB buffers (like a step's activations), then free them
# all; print the minor page faults per round
PROGRAM = """
import resource, sys
import numpy as np
sys.path.insert(0, {root!r})
if {tune}:
    from pipeline.training.memory import keep_freed_memory
    assert keep_freed_memory()
def one_round():
    buffers = [np.ones(4 * 2**20, np.uint8) for _ in range(20)]
    del buffers
for _ in range(3):
    one_round()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    one_round()
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 20)
"""


def _faults_per_round(tune: bool) -> float:
    code = PROGRAM.format(root=str(ROOT), tune=tune)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc only")
def test_freed_buffers_are_reused_instead_of_faulted_in_again():
    """80 MB is 20,480 pages of 4 KB: untuned, glibc gives the freed memory back to the kernel
    (mapped blocks unmapped, or the heap top trimmed) and every round faults about half of it
    in again (10,228 measured); tuned, the same memory comes back, already mapped (0)."""
    assert _faults_per_round(tune=False) > 5_000
    assert _faults_per_round(tune=True) < 200


def test_is_harmless_to_call_twice():
    from pipeline.training.memory import keep_freed_memory

    first, second = keep_freed_memory(), keep_freed_memory()
    assert first == second


@pytest.mark.parametrize("overlay", [[], ["multi_gpu_train.json"]])
def test_training_configs_call_it_at_initialize(overlay):
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(ROOT / "bundle" / "configs" / name) for name in ["train.json", *overlay]])
    assert "$pipeline.training.memory.keep_freed_memory()" in parser["initialize"]
