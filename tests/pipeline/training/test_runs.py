"""Run folders: which model evaluate and inference take when no --ckpt_path is given."""

from __future__ import annotations

import logging
import os

import pytest

from pipeline.training.runs import latest_checkpoint


def test_newest_model_is_taken_and_the_log_names_its_run(tmp_path, caplog):
    for name, mtime in (("older", 1_000_000_000), ("newer", 1_700_000_000)):
        model = tmp_path / "runs" / name / "models" / "model.pt"
        model.parent.mkdir(parents=True)
        model.write_bytes(b"weights")
        os.utime(model, (mtime, mtime))
    with caplog.at_level(logging.INFO, logger="pipeline.training"):
        chosen = latest_checkpoint(tmp_path)
    assert chosen == str(tmp_path / "runs" / "newer" / "models" / "model.pt")
    [message] = [r.getMessage() for r in caplog.records if "No --ckpt_path" in r.getMessage()]
    assert "run newer" in message and "newest of 2 runs" in message
    assert "2023-11-1" in message  # 1_700_000_000 s is 2023-11-14/15 depending on the time zone


def test_no_trained_model_names_the_folder_and_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="pass --ckpt_path"):
        latest_checkpoint(tmp_path)
