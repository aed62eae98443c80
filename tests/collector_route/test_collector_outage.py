"""The collector away for longer than the SDK's OTLP retries: the training side keeps what it has not accepted.

The SDK's OTLP exporter gives an export up after about 10 s of retries. Under the ``tensorboard``
configurator it runs inside a ``DurableMetricExporter`` in the export process: each export is
journaled on local disk (``OTEL_PYTHON_TENSORBOARD_JOURNAL_DIR``) until the collector accepts it.
Here the collector (the real binary, the shipped ``otel-collector.yaml``) is stopped by its PID for
``OUTAGE`` seconds, three times the SDK's window, while ``paced_train.py`` goes on logging; then it
comes back on the same ports. Everything is real: the receiver as its own process, the session's
``mlflow server``. The mechanism is the same for an outage of minutes.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from route_support import (
    PACED,
    MlflowReader,
    ReceiverProcess,
    assert_paced_run,
    assert_same_points,
    finished,
    instrumented,
    tensorboard_points,
)
from support.collector import Collector
from support.mlflow_server import MlflowServer

from opentelemetry.instrumentation.tensorboard import journal
from opentelemetry.instrumentation.tensorboard.capture import SCALAR, STEP, TAG

pytestmark = pytest.mark.slow

OUTAGE = 30.0  # seconds the collector is away: three times the SDK's retry window
PAUSE = "0.05"


def route(binary: Path, mlflow_uri: str, tmp_path: Path) -> tuple[ReceiverProcess, Collector, MlflowReader]:
    receiver = ReceiverProcess(mlflow_uri, tmp_path / "receiver.log").start()
    collector = Collector(
        binary, tmp_path / "storage", receiver_endpoint=receiver.endpoint, log_path=tmp_path / "collector.log"
    )
    return receiver, collector, MlflowReader(mlflow_uri)


def train(collector: Collector, experiment: str, cwd: Path, steps: int, journals: Path) -> subprocess.Popen[str]:
    return instrumented(
        PACED, [str(steps), PAUSE], collector, experiment, cwd, OTEL_PYTHON_TENSORBOARD_JOURNAL_DIR=str(journals)
    )


def kept(directory: Path) -> list[tuple[Path, journal.Contents]]:
    """The journals in ``directory`` and what each still holds."""
    found = []
    for path in sorted(directory.glob(f"*{journal.JOURNAL}")):
        with contextlib.suppress(FileNotFoundError, ValueError):
            found.append((path, journal.read(path)))
    return found


def kept_steps(directory: Path) -> dict[str, list[int]]:
    """Tag -> steps of the points the journals hold, not yet accepted by the collector."""
    steps: dict[str, list[int]] = {}
    for path, contents in kept(directory):
        data = path.read_bytes()
        for _, offset, length in contents.pending:
            for resource_metrics in pickle.loads(data[offset : offset + length]).resource_metrics:
                for scope_metrics in resource_metrics.scope_metrics:
                    for metric in scope_metrics.metrics:
                        if metric.name != SCALAR:
                            continue
                        for point in metric.data.data_points:
                            for exemplar in point.exemplars:
                                tag = str(point.attributes[TAG])
                                steps.setdefault(tag, []).append(int(exemplar.filtered_attributes[STEP]))
    return steps


def until(condition: Callable[[], object], what: str, timeout: float = 120.0) -> None:
    """A liveness bound, not a speed claim."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.2)


def test_points_logged_while_the_collector_is_down_land_once(
    mlflow_server: MlflowServer, collector_binary: Path, tmp_path: Path, experiment: str
) -> None:
    steps = 1000  # about 50 s of logging: the outage falls in the middle
    journals = tmp_path / "journals"
    receiver, collector, reader = route(collector_binary, mlflow_server.uri, tmp_path)
    try:
        with collector:
            proc = train(collector, experiment, tmp_path, steps, journals)
            reader.wait_count(experiment, 1, why=collector.logs)
            collector.stop()  # SIGTERM to its PID
            stopped = time.monotonic()
            # Exports go on into the journal (under the exporter's name) while nothing accepts them.
            until(lambda: sum(len(c.pending) for _, c in kept(journals / "otlp")) >= 3, "exports kept on disk")
            time.sleep(max(OUTAGE - (time.monotonic() - stopped), 0))
            assert proc.poll() is None, "the script ended during the outage; raise steps"
            during = kept(journals / "otlp")
            collector.start()
            collector.wait_ready()
            output = finished(proc)
            reader.wait_count(experiment, 2 * steps, why=lambda: collector.logs() + receiver.logs())
    finally:
        receiver.stop()

    # The journal held exports older than the SDK's window at the restart, and then sent them.
    assert len(during) == 1, "one journal for the one export process"
    assert during[0][1].pending
    assert "did not accept an export" in output and "accepts exports again" in output, output[-4000:]
    assert "are kept in" not in output, "everything was sent before the script ended"
    assert kept(journals / "otlp") == []

    # Every step of both tags exactly once, with TensorBoard's own values and wall times.
    assert_paced_run(reader, experiment, steps)
    run = reader.only_run(experiment)
    written = tensorboard_points(tmp_path / "runs")
    for (_, tag), points in written.items():
        assert_same_points(reader.history(run.info.run_id, f"paced/{tag}"), points)


def helper_of(pid: int) -> int:
    """The export process the training process ``pid`` started (its one child, forked by whichever thread)."""

    def children() -> list[int]:
        found = []
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(FileNotFoundError):
                found += [int(child) for child in (task / "children").read_text().split()]
        return found

    until(children, "the export process starts")
    [child] = children()
    return child


def gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state in ("Z", "X")


def test_a_job_killed_while_the_collector_is_down_is_sent_by_the_next_one(
    mlflow_server: MlflowServer, collector_binary: Path, tmp_path: Path, experiment: str
) -> None:
    journals = tmp_path / "journals"
    receiver, collector, reader = route(collector_binary, mlflow_server.uri, tmp_path)
    try:
        with collector:
            (tmp_path / "killed").mkdir()
            proc = train(collector, experiment, tmp_path / "killed", 100_000, journals)
            helper = helper_of(proc.pid)
            reader.wait_count(experiment, 1, why=collector.logs)
            collector.stop()
            until(lambda: sum(len(c.pending) for _, c in kept(journals / "otlp")) >= 3, "exports kept on disk")
            os.kill(proc.pid, signal.SIGKILL)  # out of memory, a preempted node
            proc.wait(timeout=30)
            until(lambda: gone(helper), "the export process ends (its grace after the parent's death)")
            left = kept_steps(journals / "otlp")
            assert set(left) == {"loss", "accuracy"}, left
            last = max(left["loss"])

            # The next instrumented job on the machine, for another experiment, with the collector back.
            collector.start()
            collector.wait_ready()
            (tmp_path / "next").mkdir()
            after = f"{experiment}-next"
            output = finished(train(collector, after, tmp_path / "next", 20, journals))
            reader.wait_count(experiment, 2 * (last + 1), why=lambda: collector.logs() + receiver.logs())
            reader.wait_count(after, 2 * 20, why=lambda: collector.logs() + receiver.logs())
    finally:
        receiver.stop()

    assert "that ended processes left in" in output, output[-4000:]
    assert kept(journals / "otlp") == []
    # Everything the killed job handed to its export process, accepted before the outage or kept on
    # disk through it: steps 0..last of both tags, each exactly once, with the values it logged.
    run = reader.only_run(experiment)
    assert run.info.run_name == "paced_train"
    for tag, value in (("loss", lambda s: 1.0 / (s + 1)), ("accuracy", lambda s: s / 100_000)):
        history = reader.history(run.info.run_id, f"paced/{tag}")
        assert [step for step, _, _ in history] == list(range(last + 1)), f"missing or duplicated {tag} steps"
        assert [v for _, v, _ in history] == [value(s) for s in range(last + 1)]
        assert all(ts > 0 for _, _, ts in history)
    assert_paced_run(reader, after, 20)
