"""Shared fixtures: one real ``mlflow server`` on sqlite, and one on PostgreSQL, per test session, on 127.0.0.1."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from support.mlflow_server import MlflowServer
from support.postgres import Postgres

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    server = MlflowServer(tmp_path_factory.mktemp("mlflow-server")).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    """One real PostgreSQL cluster per session (Debian's server, on 127.0.0.1, deleted at the end)."""
    with Postgres() as server:
        yield server


@pytest.fixture(scope="session")
def mlflow_postgres_server(postgres: Postgres, tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    """An ``mlflow server`` whose store is the session's PostgreSQL, two workers."""
    server = MlflowServer(tmp_path_factory.mktemp("mlflow-postgres"), backend_store_uri=postgres.uri, workers=2)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def mlflow_env(mlflow_server: MlflowServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> MlflowServer:
    """Points MLflow at the session server and gives the test its own working directory."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.uri)
    monkeypatch.chdir(tmp_path)
    for name in ("MLFLOW_EXPERIMENT_NAME", "MLFLOW_RUN_ID", "OTEL_METRICS_EXPORTER", "TRACELET_BACKEND"):
        monkeypatch.delenv(name, raising=False)
    return mlflow_server
