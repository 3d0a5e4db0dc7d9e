"""Fixtures shared by the test packages."""

from __future__ import annotations

import mlflow
import pytest


@pytest.fixture(scope="module")
def mlflow_client(tmp_path_factory):
    """A client of a SQLite tracking database for the module: creating its schema takes seconds."""
    folder = tmp_path_factory.mktemp("mlflow")
    return mlflow.MlflowClient(tracking_uri=f"sqlite:///{folder}/mlflow.db")
