"""The export journal and the durable exporter: kept until accepted, sent in order, recovered once.

The real exporter here is :class:`recording_exporter.RecordingExporter` (it records what it
accepts and refuses while a flag file exists), so each test decides when the destination is
"down"; the collector route's own outage test (``tests/collector_route/test_collector_outage.py``)
does the same with a real collector, receiver and MLflow.
"""

from __future__ import annotations

import logging
import os
import pickle
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.sdk.metrics import Counter
from opentelemetry.sdk.metrics.export import AggregationTemporality, ConsoleMetricExporter, MetricExportResult
from recording_exporter import RecordingExporter, mark_of, marked, recorded

from opentelemetry.instrumentation.tensorboard import configurator, journal
from opentelemetry.instrumentation.tensorboard.durable_exporter import (
    DurableMetricExporter,
    RetryPolicy,
    default_directory,
    target,
)
from opentelemetry.instrumentation.tensorboard.environment_variables import (
    OTEL_PYTHON_TENSORBOARD_EXPORT_PROCESS,
    OTEL_PYTHON_TENSORBOARD_JOURNAL_DIR,
)
from opentelemetry.instrumentation.tensorboard.export_process import ProcessMetricExporter, dumps

FAST = RetryPolicy(initial_delay=0.02, multiplier=2.0, max_delay=0.1, jitter=0)
QUICK_SHUTDOWN = {"shutdown_seconds": 0.5, "shutdown_delay": 0.02}
DESTINATION = {"to": "nowhere"}


def durable(tmp_path: Path, policy: RetryPolicy = FAST) -> DurableMetricExporter:
    kwargs = {"record": str(tmp_path / "accepted"), "refuse": str(tmp_path / "down")}
    return DurableMetricExporter(
        target(RecordingExporter), kwargs, directory=tmp_path / "journal", policy=policy, **QUICK_SHUTDOWN
    )


def journals(directory: Path) -> list[Path]:
    return sorted(directory.glob(f"*{journal.JOURNAL}"))


def pending_marks(path: Path) -> list[str]:
    """The marks of a journal's entries not acknowledged, in order."""
    data = path.read_bytes()
    return [mark_of(pickle.loads(data[offset : offset + length])) for _, offset, length in journal.read(path).pending]


def until(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    """A liveness bound, not a speed claim."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.01)


def dead_journal(directory: Path, marks: list[str], destination: dict | None = None) -> Path:
    """A journal as a process that died with ``marks`` not accepted leaves it (its lock free)."""
    owner = journal.Journal.create(directory, destination or {})
    for mark in marks:
        owner.append(dumps(marked(mark)))
    path = owner.path
    owner.close()
    return path


# The journal file --------------------------------------------------------------------------------


def test_append_acknowledge_and_removal(tmp_path: Path) -> None:
    owner = journal.Journal.create(tmp_path, DESTINATION)
    assert not owner.path.exists(), "nothing is written before the first entry"
    assert owner.lock_path.exists()
    entries = [owner.append(dumps(marked(m))) for m in ("a", "b", "c")]
    assert [seq for seq, _, _ in entries] == [1, 2, 3]
    assert pending_marks(owner.path) == ["a", "b", "c"]
    owner.acknowledge(1)
    owner.acknowledge(3)
    contents = journal.read(owner.path)
    assert [seq for seq, _, _ in contents.pending] == [2]
    assert contents.acknowledged == 2
    assert contents.header["destination"] == DESTINATION
    assert contents.header["pid"] == os.getpid()
    assert not contents.torn
    owner.acknowledge(2)
    owner.remove()
    assert not owner.path.exists()
    assert owner.lock_path.exists(), "the lock is held for the process's life"
    owner.append(dumps(marked("d")))  # a new file, with its own header
    assert pending_marks(owner.path) == ["d"]
    owner.acknowledge(4)
    owner.remove()
    owner.close()
    assert list(tmp_path.iterdir()) == []


def test_torn_last_record_is_ignored_and_cut_before_acknowledging(tmp_path: Path) -> None:
    path = dead_journal(tmp_path, ["a", "b", "c"])
    whole = path.stat().st_size
    with open(path, "r+b") as file:
        file.truncate(whole - 5)  # the process died while writing "c"
    contents = journal.read(path)
    assert contents.torn
    assert pending_marks(path) == ["a", "b"]
    [(claimed, claimed_contents)] = list(journal.claim_dead(tmp_path))
    assert [seq for seq, _, _ in claimed_contents.pending] == [1, 2]
    claimed.acknowledge(1)  # lands after the last whole record, where the next reader sees it
    claimed.close()
    after = journal.read(path)
    assert not after.torn
    assert pending_marks(path) == ["b"]


def test_a_live_journal_is_never_claimed(tmp_path: Path) -> None:
    owner = journal.Journal.create(tmp_path, DESTINATION)
    owner.append(dumps(marked("a")))
    assert list(journal.claim_dead(tmp_path)) == []
    owner.close()  # the process is gone now: its entry is claimable
    claims = list(journal.claim_dead(tmp_path))
    assert len(claims) == 1
    assert list(journal.claim_dead(tmp_path)) == [], "a claimed journal is not claimed twice"
    claims[0][0].close()


def test_a_journal_of_another_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "x.journal").write_bytes(journal.record(journal.ENTRY, 1, b"payload"))
    with pytest.raises(ValueError, match="not an export journal"):
        journal.read(tmp_path / "x.journal")
    assert list(journal.claim_dead(tmp_path)) == []
    assert (tmp_path / "x.journal").exists(), "what cannot be read is kept"


# The exporter ------------------------------------------------------------------------------------


def test_failed_exports_stay_on_disk_and_are_sent_in_order(tmp_path: Path) -> None:
    (tmp_path / "down").touch()
    exporter = durable(tmp_path)
    for mark in ("1", "2", "3"):
        assert exporter.export(marked(mark)) is MetricExportResult.SUCCESS  # kept: training goes on
    [path] = journals(tmp_path / "journal")
    until(lambda: exporter.exporter.tries >= 3, "the sending thread retries")
    assert recorded(tmp_path / "accepted") == []
    assert pending_marks(path) == ["1", "2", "3"]
    (tmp_path / "down").unlink()
    assert exporter.force_flush(30_000)
    assert recorded(tmp_path / "accepted") == ["1", "2", "3"]
    assert not path.exists(), "the file goes once all its entries are accepted"
    exporter.export(marked("4"))
    assert exporter.force_flush(30_000)
    exporter.shutdown()
    assert recorded(tmp_path / "accepted") == ["1", "2", "3", "4"]
    assert list((tmp_path / "journal").iterdir()) == []


def test_shutdown_keeps_the_rest_and_the_next_process_sends_it_first(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "down").touch()
    exporter = durable(tmp_path)
    exporter.export(marked("1"))
    exporter.export(marked("2"))
    with caplog.at_level(logging.WARNING):
        exporter.shutdown(timeout_millis=60_000)  # bounded by its shutdown_seconds
    [path] = journals(tmp_path / "journal")
    kept = [r.getMessage() for r in caplog.records if "are kept in" in r.getMessage()]
    assert len(kept) == 1, kept
    assert str(path) in kept[0] and "next" in kept[0]
    assert pending_marks(path) == ["1", "2"]
    assert exporter.export(marked("late")) is MetricExportResult.FAILURE

    (tmp_path / "down").unlink()
    successor = durable(tmp_path)
    successor.export(marked("3"))
    assert successor.force_flush(30_000)
    successor.shutdown()
    assert recorded(tmp_path / "accepted") == ["1", "2", "3"]
    assert list((tmp_path / "journal").iterdir()) == []


def test_an_export_refused_for_good_does_not_hold_back_the_rest(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    kwargs = {"record": str(tmp_path / "accepted"), "refused": ("bad",)}
    exporter = DurableMetricExporter(
        target(RecordingExporter), kwargs, directory=tmp_path / "journal", policy=FAST, **QUICK_SHUTDOWN
    )
    with caplog.at_level(logging.ERROR):
        for mark in ("1", "bad", "2", "3"):
            exporter.export(marked(mark))
        assert exporter.force_flush(30_000)
    exporter.shutdown()
    assert recorded(tmp_path / "accepted") == ["1", "2", "3"]
    dropped = [r.getMessage() for r in caplog.records if "is dropped" in r.getMessage()]
    assert len(dropped) == 1, dropped
    assert list((tmp_path / "journal").iterdir()) == []


def test_an_outage_drops_nothing_however_often_the_next_export_is_tried(tmp_path: Path) -> None:
    (tmp_path / "down").touch()
    exporter = durable(tmp_path)
    for mark in ("1", "2", "3"):
        exporter.export(marked(mark))
    until(lambda: exporter.exporter.tries >= 4 * exporter.probe_every, "several probes of the next export")
    (tmp_path / "down").unlink()
    assert exporter.force_flush(30_000)
    exporter.shutdown()
    assert recorded(tmp_path / "accepted") == ["1", "2", "3"]


def test_a_recovery_that_dies_half_way_leaves_only_the_rest(tmp_path: Path) -> None:
    directory = tmp_path / "journal"
    path = dead_journal(directory, ["1", "2", "3"], destination=durable(tmp_path).destination())
    [(claimed, contents)] = list(journal.claim_dead(directory))
    claimed.acknowledge(contents.pending[0][0])  # "1" was accepted, then the recovering process died
    claimed.close()
    successor = durable(tmp_path)
    successor.export(marked("4"))
    assert successor.force_flush(30_000)
    successor.shutdown()
    assert recorded(tmp_path / "accepted") == ["2", "3", "4"]
    assert not path.exists()


def test_journals_for_another_destination_are_left_alone(tmp_path: Path) -> None:
    directory = tmp_path / "journal"
    other = dead_journal(directory, ["elsewhere"], destination={"exporter": "x:Y", "kwargs": {}, "endpoint": None})
    exporter = durable(tmp_path)
    exporter.export(marked("1"))
    assert exporter.force_flush(30_000)
    exporter.shutdown()
    assert recorded(tmp_path / "accepted") == ["1"]
    assert pending_marks(other) == ["elsewhere"]
    assert (directory / other.name.replace(journal.JOURNAL, journal.LOCK)).exists()


RECOVER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from recording_exporter import RecordingExporter, marked
    from opentelemetry.instrumentation.tensorboard.durable_exporter import DurableMetricExporter, target

    tmp, name = Path(sys.argv[1]), sys.argv[2]
    kwargs = {"record": str(tmp / "accepted")}
    exporter = DurableMetricExporter(target(RecordingExporter), kwargs, directory=tmp / "journal")
    (tmp / f"ready-{name}").touch()
    while not (tmp / "go").exists():
        time.sleep(0.001)
    exporter.export(marked(name))  # the first export claims the dead journals
    assert exporter.force_flush(60_000)
    exporter.shutdown()
    """
)


def test_two_processes_starting_at_once_send_each_dead_entry_once(tmp_path: Path) -> None:
    directory = tmp_path / "journal"
    kwargs = {"record": str(tmp_path / "accepted")}
    destination = DurableMetricExporter(target(RecordingExporter), kwargs, directory=directory).destination()
    dead = [f"{j}.{i}" for j in range(4) for i in range(25)]
    for j in range(4):
        dead_journal(directory, dead[25 * j : 25 * (j + 1)], destination=destination)
    here = str(Path(__file__).parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (here, os.environ.get("PYTHONPATH")) if p)}
    procs = [
        subprocess.Popen([sys.executable, "-c", RECOVER, str(tmp_path), name], env=env, cwd=tmp_path)
        for name in ("p", "q")
    ]
    until(lambda: all((tmp_path / f"ready-{n}").exists() for n in ("p", "q")), "both processes start", 120)
    (tmp_path / "go").touch()
    for proc in procs:
        assert proc.wait(timeout=120) == 0
    sent = recorded(tmp_path / "accepted")
    assert sorted(sent) == sorted([*dead, "p", "q"]), "every dead entry exactly once, and both new ones"
    for j in range(4):  # each journal in its own order, whoever sent it
        marks = [m for m in sent if m.startswith(f"{j}.")]
        assert marks == dead[25 * j : 25 * (j + 1)]
    assert list(directory.iterdir()) == []


# What the reader sees ----------------------------------------------------------------------------


def test_the_real_exporters_preferences_reach_the_reader(tmp_path: Path) -> None:
    kwargs = {
        "endpoint": "http://127.0.0.1:9/v1/metrics",
        "preferred_temporality": {Counter: AggregationTemporality.DELTA},
    }
    wrapper = DurableMetricExporter(target(OTLPMetricExporter), kwargs, directory=tmp_path)
    assert wrapper._preferred_temporality == wrapper.exporter._preferred_temporality
    assert wrapper._preferred_temporality[Counter] is AggregationTemporality.DELTA
    assert wrapper._preferred_aggregation == wrapper.exporter._preferred_aggregation
    process = ProcessMetricExporter(DurableMetricExporter, {"exporter": target(OTLPMetricExporter), "kwargs": kwargs})
    assert process._preferred_temporality[Counter] is AggregationTemporality.DELTA
    process.shutdown()
    wrapper.shutdown()
    assert list(tmp_path.iterdir()) == [], "a wrapper that never exported leaves nothing"


def test_default_directory(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(OTEL_PYTHON_TENSORBOARD_JOURNAL_DIR, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert default_directory("otlp") == tmp_path / "cache" / "opentelemetry-tensorboard" / "otlp"
    monkeypatch.setenv(OTEL_PYTHON_TENSORBOARD_JOURNAL_DIR, str(tmp_path / "j"))
    assert default_directory("otlp_proto_http") == tmp_path / "j" / "otlp_proto_http"


def test_the_configurator_wraps_the_otlp_exporter_in_the_export_process_only(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    built: list[object] = []
    monkeypatch.setattr(configurator, "PeriodicExportingMetricReader", lambda exporter, **_: built.append(exporter))
    monkeypatch.setattr(configurator, "meter_provider", lambda *args, **kwargs: None)
    monkeypatch.setattr(configurator, "set_meter_provider", lambda provider: None)
    monkeypatch.setenv(OTEL_PYTHON_TENSORBOARD_JOURNAL_DIR, str(tmp_path))
    monkeypatch.delenv(OTEL_PYTHON_TENSORBOARD_EXPORT_PROCESS, raising=False)
    configurator._init_metrics({"otlp_proto_http": OTLPMetricExporter, "console": ConsoleMetricExporter})
    helper, console = built
    assert isinstance(helper, ProcessMetricExporter)
    wrapper = helper.exporter
    assert isinstance(wrapper, DurableMetricExporter)
    assert type(wrapper.exporter) is OTLPMetricExporter
    assert wrapper.directory == tmp_path / "otlp"
    assert type(console) is ConsoleMetricExporter
    helper.shutdown()

    built.clear()
    monkeypatch.setenv(OTEL_PYTHON_TENSORBOARD_EXPORT_PROCESS, "false")
    configurator._init_metrics({"otlp": OTLPMetricExporter})
    assert [type(exporter) for exporter in built] == [OTLPMetricExporter]
    assert list(tmp_path.iterdir()) == []
