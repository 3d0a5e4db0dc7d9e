"""Fixtures shared by the test packages."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import mlflow
import pytest

from tests.support import TINY, free_port, wait_until_up


@pytest.fixture(scope="session")
def tiny_phantom(tmp_path_factory) -> Path:
    """The phantom of the TINY recipe (4 patients, seed 0), generated once per test session."""
    from pipeline.data.phantom import generate_dataset

    return generate_dataset(
        tmp_path_factory.mktemp("tiny") / "phantom_lgg", n_patients=TINY["phantom_patients"], seed=0
    )


@pytest.fixture
def bundle_with_phantom(tmp_path, tiny_phantom) -> Path:
    """A bundle root whose default dataset folder (outputs/phantom_lgg) holds a copy of the tiny
    phantom, as a first training run leaves it."""
    import shutil

    shutil.copytree(tiny_phantom, tmp_path / "outputs" / "phantom_lgg")
    return tmp_path


@pytest.fixture(scope="module")
def mlflow_client(tmp_path_factory):
    """A client of a SQLite tracking database for the module: creating its schema takes seconds."""
    folder = tmp_path_factory.mktemp("mlflow")
    return mlflow.MlflowClient(tracking_uri=f"sqlite:///{folder}/mlflow.db")


@pytest.fixture
def mlflow_server(tmp_path):
    """A real ``mlflow server`` (SQLite store, proxied artifacts) on 127.0.0.1; its URL. Stopped after."""
    port = free_port()
    log = tmp_path / "server.log"
    mlflow = Path(sys.executable).with_name("mlflow")
    command = [
        str(mlflow),
        "server",
        "--backend-store-uri",
        f"sqlite:///{tmp_path / 'server.db'}",
        "--artifacts-destination",
        str(tmp_path / "artifacts"),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
        "--allowed-hosts",
        f"127.0.0.1:{port},localhost:{port}",
    ]
    with open(log, "w") as handle:
        process = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, cwd=tmp_path)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(url, process, log)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
