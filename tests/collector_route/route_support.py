"""Pieces the collector-route tests share: the receiver as a real process, instrumented scripts, reading back.

The route under test: training process --OTLP/HTTP--> otelcol-tracelet (otel-collector.yaml)
--otlp_http--> ``tracelet receive`` --> MLflow, and the collector's prometheus exporter --> Prometheus.
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from fractions import Fraction
from pathlib import Path
from typing import Any

import requests
from mlflow.tracking import MlflowClient
from support.collector import REPO_ROOT, Collector, free_port, stop_process, tail
from tbparse import SummaryReader

TRAIN = REPO_ROOT / "examples" / "train.py"
PACED = Path(__file__).with_name("paced_train.py")
INSTRUMENT = Path(sys.executable).with_name("opentelemetry-instrument")
# The instruments have no unit, so the collector exposes ``tensorboard.scalar`` as
# ``tensorboard_scalar``, the same name as tracelet's in-process Prometheus backend.
SCALAR_SERIES = '{__name__="tensorboard_scalar"'


def clean_env(**extra: str) -> dict[str, str]:
    """A child's environment without OTEL_/MLFLOW_/TRACELET_ settings from the calling shell."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "MLFLOW_", "TRACELET_"))}
    env.update(OMP_NUM_THREADS="1", **extra)
    return env


class ReceiverProcess:
    """``python -m tracelet.cli receive`` on a fixed free port; restartable, stopped by its own PID."""

    def __init__(self, tracking_uri: str, log_path: Path, token: str = "", port: int | None = None) -> None:
        self.tracking_uri = tracking_uri
        self.log_path = log_path
        self.token = token
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ReceiverProcess:
        args = [sys.executable, "-m", "tracelet.cli", "receive", "--port", str(self.port)]
        args += ["--tracking-uri", self.tracking_uri]
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                args,
                env=clean_env(TRACELET_RECEIVER_TOKEN=self.token),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Posts an empty OTLP request (nothing to write) until it is answered 200."""
        deadline = time.monotonic() + timeout
        headers = {"Content-Type": "application/x-protobuf", "Authorization": f"Bearer {self.token}"}
        while True:
            if self.proc is None or self.proc.poll() is not None:
                raise RuntimeError(f"receiver exited before ready:\n{self.logs()}")
            try:
                if requests.post(f"{self.endpoint}/v1/metrics", data=b"", headers=headers, timeout=2).ok:
                    return
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"receiver not ready after {timeout}s:\n{self.logs()}")
            time.sleep(0.1)

    def stop(self) -> int | None:
        return stop_process(self.proc) if self.proc is not None else None

    def kill(self) -> None:
        """SIGKILL: whatever request is in flight gets no answer."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=15)

    def logs(self) -> str:
        return tail(self.log_path)


def instrumented(
    script: Path, args: list[str], collector: Collector, experiment: str, cwd: Path, **extra: str
) -> subprocess.Popen[str]:
    """Starts ``opentelemetry-instrument python script`` sending OTLP/HTTP to the collector; the script is unchanged.

    Exports wait for the collector in a journal under ``cwd`` (unless ``extra`` names the
    directory), so no test leaves anything in the user's cache or finds another test's journals.
    """
    extra.setdefault("OTEL_PYTHON_TENSORBOARD_JOURNAL_DIR", str(cwd / "otlp-journals"))
    env = clean_env(
        OTEL_METRICS_EXPORTER="otlp",
        OTEL_EXPORTER_OTLP_METRICS_PROTOCOL="http/protobuf",
        OTEL_EXPORTER_OTLP_METRICS_ENDPOINT=collector.otlp_metrics_url,
        OTEL_METRIC_EXPORT_INTERVAL="500",
        MLFLOW_EXPERIMENT_NAME=experiment,
        **extra,
    )
    return subprocess.Popen(
        [str(INSTRUMENT), sys.executable, str(script), *args],
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def finished(proc: subprocess.Popen[str], timeout: float = 300) -> str:
    """Waits for a script started by :func:`instrumented`; returns its output, failing on a non-zero exit."""
    output, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, output[-6000:]
    return output


class MlflowReader:
    """Reads runs and metric histories back from the MLflow server."""

    def __init__(self, uri: str) -> None:
        self.client = MlflowClient(tracking_uri=uri)

    def runs(self, experiment: str) -> list[Any]:
        found = self.client.get_experiment_by_name(experiment)
        if found is None:
            return []
        return self.client.search_runs([found.experiment_id], max_results=100)

    def only_run(self, experiment: str) -> Any:
        runs = self.runs(experiment)
        assert len(runs) == 1, [r.info.run_name for r in runs]
        return runs[0]

    def history(self, run_id: str, key: str) -> list[tuple[int, float, int]]:
        """(step, value, timestamp ms) of every stored point of ``key``, by step then time."""
        return sorted((p.step, p.value, p.timestamp) for p in self.client.get_metric_history(run_id, key))

    def count(self, experiment: str) -> int:
        """Points stored so far in the experiment's runs (duplicates included)."""
        total = 0
        for run in self.runs(experiment):
            for key in run.data.metrics:
                total += len(self.client.get_metric_history(run.info.run_id, key))
        return total

    def wait_count(self, experiment: str, at_least: int, timeout: float = 180.0, why: Callable[[], str] = str) -> int:
        """Polls until the experiment holds ``at_least`` points; a bound for liveness, not a speed claim."""
        deadline = time.monotonic() + timeout
        while True:
            count = self.count(experiment)
            if count >= at_least:
                return count
            if time.monotonic() > deadline:
                raise TimeoutError(f"{count} of {at_least} points in MLflow after {timeout}s\n{why()}")
            time.sleep(0.5)


def tensorboard_points(log_root: Path) -> dict[tuple[str, str], list[tuple[int, float, float]]]:
    """What a script wrote to its event files: (writer dir, tag) -> [(step, value, wall time)] by step."""
    frame = SummaryReader(str(log_root), pivot=False, extra_columns={"dir_name", "wall_time"}).scalars
    written: dict[tuple[str, str], list[tuple[int, float, float]]] = {}
    for row in frame.itertuples():
        written.setdefault((row.dir_name, row.tag), []).append((int(row.step), float(row.value), row.wall_time))
    return {key: sorted(points) for key, points in written.items()}


def assert_same_points(stored: list[tuple[int, float, int]], written: list[tuple[int, float, float]]) -> None:
    """Each written point is stored once: same steps in order, float32-close values, same wall time to the ms."""
    assert [step for step, _, _ in stored] == [step for step, _, _ in written]
    for (step, value, timestamp), (_, tb_value, wall_time) in zip(stored, written, strict=True):
        # TensorBoard keeps float32; MLflow gets the Python float that was passed to add_scalar.
        assert math.isclose(value, tb_value, rel_tol=2**-23, abs_tol=1e-30), (step, value, tb_value)
        # The double TensorBoard wrote, floored to the ms exactly (``wall_time * 1000`` in floats can round up).
        assert timestamp == math.floor(Fraction(wall_time) * 1000), (step, timestamp, wall_time)


def assert_paced_run(reader: MlflowReader, experiment: str, steps: int) -> None:
    """The run of ``paced_train.py``: every step of both tags exactly once, with the values it logged."""
    run = reader.only_run(experiment)
    assert run.info.run_name == "paced_train"
    assert set(run.data.metrics) == {"paced/loss", "paced/accuracy"}
    loss = reader.history(run.info.run_id, "paced/loss")
    accuracy = reader.history(run.info.run_id, "paced/accuracy")
    assert [p[0] for p in loss] == list(range(steps)), "missing or duplicated loss steps"
    assert [p[0] for p in accuracy] == list(range(steps)), "missing or duplicated accuracy steps"
    assert [p[1] for p in loss] == [1.0 / (step + 1) for step in range(steps)]
    assert [p[1] for p in accuracy] == [step / steps for step in range(steps)]


def wait_log(path: Path, text: str, timeout: float = 60.0) -> None:
    """Waits until the log file mentions ``text`` (e.g. a retry) or fails showing its tail."""
    deadline = time.monotonic() + timeout
    while text not in path.read_text(errors="replace"):
        assert time.monotonic() < deadline, f"{text!r} not in {path.name}:\n{tail(path)}"
        time.sleep(0.2)


def labels(result: list[dict[str, Any]]) -> list[Mapping[str, str]]:
    return [item["metric"] for item in result]
