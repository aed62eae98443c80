"""Several training jobs at once through the real collector and receiver into an ``mlflow server`` on PostgreSQL.

Everything is real: Debian's PostgreSQL (a cluster of the session on 127.0.0.1), ``mlflow server``
on it with two workers (``postgresql+psycopg2://``), the built collector with the shipped
otel-collector.yaml (several sending consumers: requests of different jobs reach MLflow at the same
time) and ``tracelet receive`` as its own process. MLflow's duplicate check and its writes run as
PostgreSQL SQL here, not sqlite's, so "exactly once" is checked in the database itself as well as
through MLflow's API.
"""

from __future__ import annotations

import re
import time
import uuid
from pathlib import Path

import psycopg2
import requests
from route_support import PACED, MlflowReader, ReceiverProcess, assert_paced_run, finished, instrumented
from support.collector import Collector
from support.mlflow_server import MlflowServer
from support.postgres import Postgres

JOBS = 3
STEPS = 80
KEYS = ("paced/loss", "paced/accuracy")


def queued(collector: Collector) -> float:
    """Requests waiting in the collector's sending queue (its own ``otelcol_exporter_queue_size``)."""
    text = requests.get(collector.telemetry_url, timeout=5).text
    sizes = re.findall(r'^otelcol_exporter_queue_size\{[^}]*exporter="otlp_http"[^}]*\} (\S+)$', text, re.M)
    assert sizes, "the collector does not report otelcol_exporter_queue_size for otlp_http"
    return sum(float(size) for size in sizes)


def wait_empty_queue(collector: Collector, timeout: float = 120.0) -> None:
    """Nothing left to send, so no retry can add a point after the store is read."""
    deadline = time.monotonic() + timeout
    while queued(collector) > 0:
        assert time.monotonic() < deadline, f"collector queue not empty after {timeout}s:\n{collector.logs()}"
        time.sleep(0.2)


def test_concurrent_jobs_land_once_in_mlflow_on_postgres(
    postgres: Postgres, mlflow_postgres_server: MlflowServer, collector_binary: Path, tmp_path: Path
) -> None:
    assert mlflow_postgres_server.store_uri.startswith("postgresql+psycopg2://")
    receiver = ReceiverProcess(mlflow_postgres_server.uri, tmp_path / "receiver.log").start()
    collector = Collector(
        collector_binary, tmp_path / "storage", receiver_endpoint=receiver.endpoint, log_path=tmp_path / "collector.log"
    )
    reader = MlflowReader(mlflow_postgres_server.uri)
    experiments = [f"postgres-route-{uuid.uuid4().hex[:8]}" for _ in range(JOBS)]
    try:
        with collector:
            jobs = []
            for number, experiment in enumerate(experiments):
                cwd = tmp_path / f"job{number}"
                cwd.mkdir()
                jobs.append(instrumented(PACED, [str(STEPS), "0.01"], collector, experiment, cwd))
            for job in jobs:
                finished(job)
            for experiment in experiments:
                reader.wait_count(experiment, STEPS * len(KEYS), why=lambda: collector.logs() + receiver.logs())
            wait_empty_queue(collector)

            # Through MLflow's API: each job its own run, every step of both tags once, the values it logged.
            run_ids = []
            for experiment in experiments:
                assert_paced_run(reader, experiment, STEPS)
                run_ids.append(reader.only_run(experiment).info.run_id)
    finally:
        receiver.stop()

    # In PostgreSQL itself: the rows MLflow wrote, one per (run, key, step), none for another key.
    with psycopg2.connect(postgres.dsn) as connection, connection.cursor() as cursor:
        cursor.execute(
            "SELECT run_uuid, key, step, count(*) FROM metrics WHERE run_uuid = ANY(%s) GROUP BY run_uuid, key, step",
            (run_ids,),
        )
        rows = cursor.fetchall()
    connection.close()
    assert {count for *_, count in rows} == {1}, "a point stored more than once"
    assert sorted((run, key, step) for run, key, step, _ in rows) == sorted(
        (run, key, step) for run in run_ids for key in KEYS for step in range(STEPS)
    )
