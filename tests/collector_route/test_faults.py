"""Faults on the collector route, each hitting a training run in the middle: nothing lost, nothing twice.

The script logs through TensorBoard under ``opentelemetry-instrument`` while one part of the route
goes away for a while: the collector (restarted), ``tracelet receive`` (killed, started again
later) or MLflow (stopped, started again later). Once everything is back, every step of every tag
is in MLflow exactly once.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from route_support import (
    PACED,
    MlflowReader,
    ReceiverProcess,
    assert_paced_run,
    finished,
    instrumented,
    wait_log,
)
from support.collector import Collector
from support.mlflow_server import MlflowServer

pytestmark = pytest.mark.slow

STEPS = 600
PAUSE = "0.01"  # at least 6 s of logging: time for a fault in the middle


def route(binary: Path, mlflow_uri: str, tmp_path: Path) -> tuple[ReceiverProcess, Collector, MlflowReader]:
    """A started receiver writing to ``mlflow_uri``, a collector (not started) sending to it, a reader."""
    receiver = ReceiverProcess(mlflow_uri, tmp_path / "receiver.log").start()
    collector = Collector(
        binary, tmp_path / "storage", receiver_endpoint=receiver.endpoint, log_path=tmp_path / "collector.log"
    )
    return receiver, collector, MlflowReader(mlflow_uri)


def start_training(collector: Collector, experiment: str, cwd: Path) -> subprocess.Popen[str]:
    return instrumented(PACED, [str(STEPS), PAUSE], collector, experiment, cwd)


def mid_run(proc: subprocess.Popen[str], reader: MlflowReader, experiment: str, logs: str | Path) -> None:
    """Returns once the first points are in MLflow while the script is still logging."""
    reader.wait_count(experiment, 1, why=lambda: Path(logs).read_text(errors="replace")[-4000:])
    assert proc.poll() is None, "the script ended before the fault could hit it; raise STEPS"


def test_collector_restarted_mid_run(
    mlflow_server: MlflowServer, collector_binary: Path, tmp_path: Path, experiment: str
) -> None:
    receiver, collector, reader = route(collector_binary, mlflow_server.uri, tmp_path)
    try:
        with collector:
            proc = start_training(collector, experiment, tmp_path)
            mid_run(proc, reader, experiment, collector.log_path)
            collector.restart()  # SIGTERM, then the same ports and persistent queue
            finished(proc)
            reader.wait_count(experiment, 2 * STEPS, why=lambda: collector.logs() + receiver.logs())
    finally:
        receiver.stop()
    assert_paced_run(reader, experiment, STEPS)


def test_receiver_down_for_a_while(
    mlflow_server: MlflowServer, collector_binary: Path, tmp_path: Path, experiment: str
) -> None:
    receiver, collector, reader = route(collector_binary, mlflow_server.uri, tmp_path)
    try:
        with collector:
            proc = start_training(collector, experiment, tmp_path)
            mid_run(proc, reader, experiment, collector.log_path)
            receiver.kill()  # a request in flight gets no answer
            wait_log(collector.log_path, "Will retry")
            finished(proc)  # the rest of the run waits in the collector's queue
            assert reader.count(experiment) < 2 * STEPS
            receiver.start()
            reader.wait_count(experiment, 2 * STEPS, why=lambda: collector.logs() + receiver.logs())
    finally:
        receiver.stop()
    assert_paced_run(reader, experiment, STEPS)


def test_mlflow_down_for_a_while(collector_binary: Path, tmp_path: Path, experiment: str) -> None:
    server = MlflowServer(tmp_path / "mlflow").start()  # its own: the session's server stays up
    receiver, collector, reader = route(collector_binary, server.uri, tmp_path)
    try:
        with collector:
            proc = start_training(collector, experiment, tmp_path)
            mid_run(proc, reader, experiment, collector.log_path)
            server.stop()
            wait_log(receiver.log_path, "answering 503 so the sender retries")
            finished(proc)
            wait_log(collector.log_path, "503")  # the collector saw it and keeps the data queued
            server.start()
            reader.wait_count(experiment, 2 * STEPS, why=lambda: collector.logs() + receiver.logs())
        assert_paced_run(reader, experiment, STEPS)
    finally:
        receiver.stop()
        server.stop()
