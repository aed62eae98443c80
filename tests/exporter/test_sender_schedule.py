"""Requests that are not full wait for ``schedule_delay``: frequent exports do not multiply MLflow's requests."""

from __future__ import annotations

import time

from mlflow_readback import T0, Mlflow, unique

from opentelemetry.exporter.mlflow.batching import MAX_METRICS
from opentelemetry.exporter.mlflow.mapping import RunBatch, RunKey
from opentelemetry.exporter.mlflow.sender import Sender


def _rows(run: RunKey, first: int, count: int) -> RunBatch:
    return RunBatch(run, [("loss", float(step), (T0 + step) * 1000, step) for step in range(first, first + count)])


def _wait(condition, limit: float = 60.0) -> bool:
    deadline = time.monotonic() + limit
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_small_exports_wait_for_the_schedule_a_full_request_and_a_flush_go_at_once(mlflow_server, tmp_path) -> None:
    experiment = unique("schedule")
    run = RunKey("instance-schedule", experiment, "schedule")
    requests: list[int] = []  # points delivered so far, after each request
    sender = Sender(
        mlflow_server.uri,
        tmp_path / "spool",
        instance="instance-schedule",
        schedule_delay=3600.0,  # the schedule never comes during the test: only size and flush send
        progress=requests.append,
    )
    # The first rows go at once (nothing was sent before), and open the schedule.
    sender.submit([_rows(run, 0, 10)])
    assert _wait(lambda: len(requests) == 1)
    # Twenty exports of ten points each, as a half-second hand-off brings them: none is sent alone.
    for n in range(20):
        sender.submit([_rows(run, 10 + 10 * n, 10)])
    time.sleep(1.0)
    assert requests == [10]
    # Enough for a full request: it goes without waiting for the schedule.
    # Enough for a full request: it goes without waiting for the schedule, and the rest with it.
    sender.submit([_rows(run, 210, MAX_METRICS)])
    assert _wait(lambda: requests[-1] == 210 + MAX_METRICS)
    assert requests == [10, 10 + MAX_METRICS, 210 + MAX_METRICS]
    # A flush sends what is left, however little.
    sender.submit([_rows(run, 210 + MAX_METRICS, 5)])
    assert sender.flush(timeout=60.0)
    assert requests == [10, 10 + MAX_METRICS, 210 + MAX_METRICS, 215 + MAX_METRICS]
    sender.shutdown("FINISHED", timeout=30.0)

    mlflow = Mlflow(mlflow_server.uri)
    stored = mlflow.history(mlflow.only_run(experiment)["info"]["run_id"], "loss")
    assert sorted(step for step, _value, _time in stored) == list(range(215 + MAX_METRICS))


def test_without_a_schedule_every_export_is_sent_as_it_comes(mlflow_server, tmp_path) -> None:
    experiment = unique("schedule-none")
    run = RunKey("instance-schedule-none", experiment, "schedule-none")
    requests: list[int] = []
    sender = Sender(mlflow_server.uri, tmp_path / "spool", instance="instance-schedule-none", progress=requests.append)
    for n in range(3):
        sender.submit([_rows(run, 10 * n, 10)])
        assert _wait(lambda n=n: len(requests) == n + 1)
    assert requests == [10, 20, 30]  # one request per export
    sender.shutdown("FINISHED", timeout=30.0)
