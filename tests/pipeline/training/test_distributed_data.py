"""The multi-GPU overlay's data preparation takes every argument train.json gives prepare_data."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

from pipeline.data.prepare import prepare_data
from pipeline.training.distributed import prepare_data_distributed

CONFIGS = Path(__file__).resolve().parents[3] / "bundle" / "configs"


def test_the_distributed_preparation_has_prepare_datas_parameters_and_defaults():
    single = inspect.signature(prepare_data).parameters
    distributed = inspect.signature(prepare_data_distributed).parameters
    assert {n: p.default for n, p in distributed.items()} == {n: p.default for n, p in single.items()}


def test_every_key_train_json_passes_to_data_is_accepted_by_the_overlay():
    data = json.loads((CONFIGS / "train.json").read_text())["data"]
    overlay = json.loads((CONFIGS / "multi_gpu_train.json").read_text())
    assert overlay["data#_target_"] == "pipeline.training.distributed.prepare_data_distributed"
    given = {key for key in data if not key.startswith("_")}
    assert given <= set(inspect.signature(prepare_data_distributed).parameters)
