"""multi_gpu_train.json under a real torchrun: 2 processes, gloo on the CPU, one short epoch.

The test writes its own extra config into tmp_path, merged last: the tiny overrides, and a
``run`` that first attaches ``record_ranks`` (below) so every rank leaves behind what it drew,
what it validated and its final weights. Nothing of that is in the shipped configs.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.support import TINY, free_port, world_of_one_workflow

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "bundle" / "configs"
WORLD = 2


def record_ranks(trainer, sampler, evaluator, network, data, out_dir: str) -> None:
    """Test-only: on completion, each rank writes ``rank<r>.json`` and ``rank<r>.pt`` to ``out_dir``.

    The JSON holds the training-set indices this rank trained on (from the batches' patient and
    slice keys), their sampling weights, the sampler's epoch and the last validation metrics;
    the .pt file holds the network's final state_dict.
    """
    from ignite.engine import Events

    import pipeline.training.distributed as distributed

    index_of = {(r["patient"], int(r["slice"])): i for i, r in enumerate(data.train)}
    drawn: list[int] = []
    sampler_epochs: list[int] = []

    def iteration_completed(engine) -> None:
        batch = engine.state.batch
        drawn.extend(index_of[(p, int(s))] for p, s in zip(batch["patient"], batch["slice"]))
        sampler_epochs.append(int(sampler.epoch))

    def completed(engine) -> None:
        rank = distributed.rank()
        record = {
            "rank": rank,
            "world_size": distributed.world_size(),
            "drawn": drawn,
            "drawn_weights": [float(data.weights[i]) for i in drawn],
            "n_train": len(data.train),
            "sampler_epochs": sorted(set(sampler_epochs)),
            "iterations": int(engine.state.iteration),
            "val_metrics": {k: float(v) for k, v in evaluator.state.metrics.items()},
            "val_slices": len(evaluator.data_loader.dataset),
        }
        (Path(out_dir) / f"rank{rank}.json").write_text(json.dumps(record))
        torch.save(getattr(network, "module", network).state_dict(), Path(out_dir) / f"rank{rank}.pt")

    trainer.add_event_handler(Events.ITERATION_COMPLETED, iteration_completed)
    trainer.add_event_handler(Events.COMPLETED, completed)


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("ddp")
    records = tmp_path / "ranks"
    records.mkdir()
    extra = dict(TINY, epochs=1, bundle_root=str(tmp_path / "bundle"))
    extra["+imports"] = ["$import tests.bundle.test_distributed as distributed_test"]
    extra["run"] = [
        "$distributed_test.record_ranks(@train#trainer, @train#sampler, "
        f"@validate#evaluator, @network, @data, {str(records)!r})",
        "$@train#trainer.run()",
    ]
    extra_file = tmp_path / "test_extra.json"
    extra_file.write_text(json.dumps(extra))
    config_files = [str(CONFIGS / "train.json"), str(CONFIGS / "multi_gpu_train.json"), str(extra_file)]
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc_per_node={WORLD}",
        "--nnodes=1",
        "--master_addr=127.0.0.1",
        f"--master_port={free_port()}",
        "-m",
        "monai.bundle",
        "run",
        "training",
        "--config_file",
        json.dumps(config_files),
    ]
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    started = time.perf_counter()
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    seconds = time.perf_counter() - started
    assert result.returncode == 0, f"torchrun failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    ranks = [json.loads((records / f"rank{r}.json").read_text()) for r in range(WORLD)]
    return {"tmp_path": tmp_path, "records": records, "ranks": ranks, "seconds": seconds, "result": result}


@pytest.mark.slow
def test_ranks_end_with_identical_weights(job):
    states = [torch.load(job["records"] / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    assert states[0].keys() == states[1].keys()
    for name in states[0]:
        assert torch.equal(states[0][name], states[1][name]), name
    # and they are the weights rank 0 saved as the final checkpoint
    (final,) = (job["tmp_path"] / "bundle" / "outputs" / "runs").glob("*/models/final.pt")
    saved = torch.load(final, weights_only=True)["network"]
    assert all(torch.equal(saved[name], states[0][name]) for name in saved)


@pytest.mark.slow
def test_each_rank_draws_its_own_half_of_the_epoch(job):
    ranks = job["ranks"]
    n = ranks[0]["n_train"]
    per_rank = math.ceil(n / WORLD)
    assert [r["rank"] for r in ranks] == [0, 1] and all(r["world_size"] == WORLD for r in ranks)
    for record in ranks:
        assert len(record["drawn"]) == per_rank  # one epoch = n draws in total, split over the ranks
        assert record["iterations"] == math.ceil(per_rank / TINY["batch_size"])
        assert record["sampler_epochs"] == [1]  # the trainer called set_epoch(1) before drawing
    # every epoch the slices are dealt out anew (seed + epoch): each rank draws from its own half
    generator = torch.Generator()
    generator.manual_seed(0 + 1)
    deal = torch.randperm(n, generator=generator).tolist()
    for record in ranks:
        assert set(record["drawn"]) <= set(deal[record["rank"] :: WORLD])
    assert not set(ranks[0]["drawn"]) & set(ranks[1]["drawn"])
    # lesion-weighted: drawn slices weigh more than an average slice (weights sum to 1)
    for record in ranks:
        mean_drawn = sum(record["drawn_weights"]) / len(record["drawn_weights"])
        assert mean_drawn > 1.5 / n


@pytest.mark.slow
def test_validation_is_split_and_its_metrics_agree_on_every_rank(job):
    ranks = job["ranks"]
    sizes = [r["val_slices"] for r in ranks]
    assert abs(sizes[0] - sizes[1]) <= 1 and all(sizes)
    assert ranks[0]["val_metrics"] == ranks[1]["val_metrics"]
    assert set(ranks[0]["val_metrics"]) >= {"val_volume_dice", "val_dice", "val_bce", "val_dice_loss"}


@pytest.mark.slow
def test_one_mlflow_run_and_one_set_of_checkpoints(job):
    from mlflow import MlflowClient

    outputs = job["tmp_path"] / "bundle" / "outputs"
    run_dirs = [p for p in (outputs / "runs").iterdir() if p.is_dir()]
    assert len(run_dirs) == 1
    models = run_dirs[0] / "models"
    assert sorted(p.name for p in models.iterdir()) == ["checkpoint_epoch=1.pt", "final.pt", "model.pt"]
    per_rank_iterations = math.ceil(math.ceil(job["ranks"][0]["n_train"] / WORLD) / TINY["batch_size"])
    final = torch.load(models / "final.pt", weights_only=True)
    assert final["trainer"]["iteration"] == per_rank_iterations
    assert final["lr_scheduler"]["total_steps"] == per_rank_iterations  # one-cycle sized per rank

    client = MlflowClient(tracking_uri=f"sqlite:///{(outputs / 'mlflow.db').resolve()}")
    experiment = client.get_experiment_by_name("lgg-segmentation")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.data.params["world_size"] == str(WORLD)
    losses = client.get_metric_history(run.info.run_id, "train_loss_iter")
    assert sorted(m.step for m in losses) == list(range(1, per_rank_iterations + 1))
    (volume_dice,) = client.get_metric_history(run.info.run_id, "val_volume_dice")
    assert math.isclose(volume_dice.value, job["ranks"][0]["val_metrics"]["val_volume_dice"])


@pytest.mark.slow
def test_world_of_one_keeps_the_bundle_properties(job, tmp_path, monkeypatch):
    """The overlay in one process (no torchrun launcher): MONAI's property check still passes."""
    phantom = job["tmp_path"] / "bundle" / "outputs" / "phantom_lgg"  # reuse the job's data
    workflow = world_of_one_workflow(monkeypatch, tmp_path, phantom_dir=str(phantom))
    try:
        workflow.initialize()
        assert workflow.check_properties() == []
        from monai.data import DistributedWeightedRandomSampler
        from torch.nn.parallel import DistributedDataParallel

        assert isinstance(workflow.parser.get_parsed_content("network"), DistributedDataParallel)
        sampler = workflow.parser.get_parsed_content("train#sampler")
        assert isinstance(sampler, DistributedWeightedRandomSampler)
        assert len(sampler) == job["ranks"][0]["n_train"]  # one rank draws the whole epoch
    finally:
        workflow.finalize()
    assert not torch.distributed.is_initialized()


def test_helpers_are_the_single_process_recipe_outside_torchrun():
    import pipeline.training.distributed as distributed

    assert distributed.world_size() == 1 and distributed.rank() == 0
    assert distributed.draws_per_rank(155) == 155
    assert distributed.shard([1, 2, 3]) == [1, 2, 3]
    assert distributed.from_rank0("unet-x") == "unet-x"
    assert distributed.local_device() == torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="n_draws"):
        distributed.draws_per_rank(0)


def test_init_without_torchrun_says_how_to_start(monkeypatch):
    import pipeline.training.distributed as distributed

    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(RuntimeError, match="torchrun --nproc_per_node"):
        distributed.init_distributed()
