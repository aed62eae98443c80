"""``tracelet import --otlp`` into the real collector route: old TensorBoard runs land as live ones do.

Event files written by ``SummaryWriter`` (no capture), then ``tracelet import --otlp`` to the built
collector with the shipped ``otel-collector.yaml``, ``tracelet receive`` as its own process and the
session's ``mlflow server``. Importing twice sends every point again (an OTLP endpoint cannot be asked
what it holds); MLflow behind the receiver stores an exact repeat once.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import requests
from route_support import MlflowReader, ReceiverProcess, assert_same_points, clean_env, tensorboard_points
from support.collector import Collector
from support.mlflow_server import MlflowServer
from torch.utils.tensorboard import SummaryWriter

TRACELET = str(Path(sys.executable).with_name("tracelet"))
STEPS = 40


def _import(log_root: Path, endpoint: str, experiment: str) -> str:
    done = subprocess.run(
        [TRACELET, "import", str(log_root), "--otlp", endpoint, "--experiment", experiment],
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def sent(collector: Collector) -> float:
    """Data points the collector's ``otlp_http`` exporter has delivered to the receiver (its own telemetry)."""
    text = requests.get(collector.telemetry_url, timeout=5).text
    pattern = r'^otelcol_exporter_sent_metric_points(?:_total)?\{[^}]*exporter="otlp_http"[^}]*\} (\S+)$'
    found = re.findall(pattern, text, re.M)
    assert found, "the collector does not report otelcol_exporter_sent_metric_points for otlp_http"
    return sum(float(value) for value in found)


def wait_sent(collector: Collector, at_least: float, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while sent(collector) < at_least:
        assert time.monotonic() < deadline, f"collector sent {sent(collector)} < {at_least}:\n{collector.logs()}"
        time.sleep(0.2)


def test_imported_runs_reach_mlflow_through_the_collector_once(
    mlflow_server: MlflowServer, collector_binary: Path, tmp_path: Path, experiment: str
) -> None:
    for name in ("train", "validation"):
        writer = SummaryWriter(str(tmp_path / "runs" / name))
        for step in range(STEPS):
            writer.add_scalar("loss", 1.0 / (step + 1), step)
        writer.close()
    written = tensorboard_points(tmp_path / "runs")
    receiver = ReceiverProcess(mlflow_server.uri, tmp_path / "receiver.log").start()
    reader = MlflowReader(mlflow_server.uri)
    try:
        with Collector(
            collector_binary,
            tmp_path / "storage",
            receiver_endpoint=receiver.endpoint,
            log_path=tmp_path / "collector.log",
        ) as collector:
            assert f"{2 * STEPS} point(s) sent" in _import(tmp_path / "runs", collector.otlp_http_url, experiment)
            reader.wait_count(experiment, 2 * STEPS, why=lambda: collector.logs() + receiver.logs())
            wait_sent(collector, 1)
            once = sent(collector)
            _import(tmp_path / "runs", collector.otlp_http_url, experiment)  # everything again
            wait_sent(collector, 2 * once)  # the same requests again, all delivered to the receiver
            runs = {run.info.run_name: run for run in reader.runs(experiment)}
            assert sorted(runs) == ["train", "validation"]
            for (directory, tag), points in written.items():
                name = Path(directory).name
                # Keys as live capture names them: <writer>/<tag>; still one row per point.
                assert_same_points(reader.history(runs[name].info.run_id, f"{name}/{tag}"), points)
    finally:
        receiver.stop()
