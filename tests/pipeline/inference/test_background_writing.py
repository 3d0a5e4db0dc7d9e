"""Writing outputs on a background thread, and the batched masks, against the one-slice rule."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from pipeline.inference import background
from pipeline.inference.background import BackgroundJobs, background_pays
from pipeline.inference.slice_masks import batch_masks, batch_thumbnails


def test_jobs_run_in_order_on_another_thread_and_drain_waits_for_all():
    jobs, seen, threads = BackgroundJobs(), [], set()
    release = threading.Event()

    def job(k):
        def run():
            if k == 0:
                release.wait(5)
            seen.append(k)
            threads.add(threading.current_thread().name)

        return run

    jobs.submit(job(0))
    jobs.submit(job(1))  # queued behind the blocked first one
    assert seen == []
    release.set()
    jobs.submit(job(2))
    jobs.drain()
    assert seen == [0, 1, 2]
    assert threads and threading.current_thread().name not in threads


def test_an_escaped_error_is_raised_by_drain_after_the_other_jobs():
    jobs, seen = BackgroundJobs(), []

    def broken():
        raise OSError("disk full")

    jobs.submit(broken)
    jobs.submit(lambda: seen.append("after"))
    with pytest.raises(OSError, match="disk full"):
        jobs.drain()
    assert seen == ["after"]


def test_without_background_jobs_run_at_once():
    jobs, seen = BackgroundJobs(background=False), []
    jobs.submit(lambda: seen.append(threading.current_thread().name))
    assert seen == [threading.current_thread().name]


def test_the_thread_is_used_on_a_gpu_or_with_a_spare_core(monkeypatch):
    monkeypatch.setattr(background.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    assert not background_pays() and not background_pays("cpu")
    assert background_pays("cuda") and background_pays(torch.device("cuda:0"))
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    assert background_pays("cpu")


@pytest.mark.parametrize(
    "option, spare, expected",
    [("auto", True, True), ("auto", False, False), (True, False, True), ("false", True, False)],
)
def test_the_writer_asks_when_auto(monkeypatch, tmp_path, option, spare, expected):
    from pipeline.inference import writers

    monkeypatch.setattr(writers, "background_pays", lambda device=None: spare)
    assert writers.MaskWriter([], tmp_path, background=option).jobs.background is expected


def test_batched_masks_equal_the_per_slice_rule():
    rng = np.random.default_rng(0)
    probs = torch.as_tensor(rng.random((5, 1, 16, 16)), dtype=torch.float32)
    sizes = [(32, 32), (32, 32), (16, 16), (40, 24), (32, 32)]
    masks = batch_masks(probs, sizes, 0.5)
    for k, size in enumerate(sizes):
        one = probs[k : k + 1]
        if size != (16, 16):
            one = torch.nn.functional.interpolate(one, size=size, mode="bilinear", align_corners=False)
        expected = (one[0, 0] > 0.5).numpy().astype(np.uint8)
        assert masks[k].dtype == np.uint8 and masks[k].shape == size
        np.testing.assert_array_equal(masks[k], expected)
    # a list of per-slice arrays gives the same
    listed = batch_masks([probs[k].numpy() for k in range(5)], sizes, 0.5)
    for a, b in zip(masks, listed):
        np.testing.assert_array_equal(a, b)


def test_batched_thumbnails_are_area_means():
    flair = torch.arange(2 * 8 * 8, dtype=torch.float32).reshape(2, 8, 8)
    thumbs = batch_thumbnails(flair, 4)
    expected = flair.numpy().reshape(2, 4, 2, 4, 2).mean(axis=(2, 4))
    np.testing.assert_allclose(np.stack(thumbs), expected)
    assert [t.shape for t in batch_thumbnails(flair, 16)] == [(8, 8), (8, 8)]  # never enlarged
