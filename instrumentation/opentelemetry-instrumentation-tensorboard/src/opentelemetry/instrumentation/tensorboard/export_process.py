"""Push exporters in a helper process, so that exporting costs the training process almost nothing.

An exporter's work (encoding OTLP protobuf, about 19 µs per exemplar in the SDK's encoder; mapping
and sending to MLflow; its HTTP client or database store) is Python that would otherwise run on a
thread of the training process, where it stalls the training thread at every point torch
releases and retakes the GIL. :class:`ProcessMetricExporter` runs the real exporter in a helper
process instead (executed afresh with the same interpreter, never forked, so nothing of the
training process is copied into it) and hands it each export's ``MetricsData`` in one pickle call
over a pipe: the TensorBoard points travel as their
:class:`~opentelemetry.instrumentation.tensorboard.capture.ScalarBlock` s, untouched.

The ``tensorboard`` configurator wraps every push exporter chosen by ``OTEL_METRICS_EXPORTER``
(``otlp``, ``mlflow``, ...) this way, except the console exporter, whose output belongs on the
script's stdout. ``OTEL_PYTHON_TENSORBOARD_EXPORT_PROCESS=false`` keeps them in process.

Protocol, both ways a 4-byte length and a pickle (the pipe joins a process to the one it started):

- to the helper: ``("config", dict)`` first, then ``("export", bytes)``, ``("flush", n, timeout)``,
  ``("close", status, timeout)``; an exporter with an ``export_payload(bytes)`` method is handed
  the export's pickle as it came (the durable exporter journals it unchanged), any other the
  unpickled ``MetricsData``;
- back: ``("log", level, logger, message)`` (the helper's log records, re-emitted through the
  exporting process's own ``logging``), ``("flushed", n, ok)``.

Life cycle: the helper lives as long as its parent. ``close`` (the provider shuts down) shuts the
exporter down with the outcome the parent saw (:mod:`~opentelemetry.instrumentation.tensorboard.
lifecycle`: FINISHED, FAILED, KILLED). The end of the pipe without one (the parent was killed:
SIGKILL, out of memory) shuts it down as KILLED. A parent that is being killed (SIGTERM, an
uncaught Ctrl-C) does not wait: the helper has ``KILLED_GRACE`` seconds, less than a scheduler's
usual grace period, for what it was handed. The helper ignores Ctrl-C (the terminal's, meant for
the training script) and runs at a lower CPU priority, so training wins a contended core. Where no
helper can be started the exporter runs in process, as it would unwrapped.

Hand-off interval: a point is safe from a SIGKILL of the training process (out of memory, a
preempted node) once it is in the helper, whose exporter keeps it (the MLflow exporter's journal,
the durable exporter's for OTLP). Readers whose exporter runs in the helper collect every
``HANDOFF_INTERVAL`` seconds (0.5) unless an interval is configured (``OTEL_METRIC_EXPORT_INTERVAL``,
``start_logging(export_interval=...)``): a killed training process loses about that much, not the
SDK's 60 s default, and TensorBoard's own event file still holds that tail for ``tracelet import``.
A hand-off costs the training process what its collection costs, and that is per point, not per
hand-off (``benchmarks/bench_training_loop.py --routes server@5,server@0.5``: the export threads
take the same CPU per second at both intervals); the exporters keep their own pace towards the
backend (the MLflow exporter's ``schedule_delay``), so a short hand-off does not multiply requests.
"""

from __future__ import annotations

import copyreg
import importlib
import io
import logging
import os
import pickle
import signal
import struct
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Mapping
from contextlib import suppress
from typing import IO, Any

from opentelemetry.attributes import BoundedAttributes
from opentelemetry.sdk.environment_variables import OTEL_METRIC_EXPORT_INTERVAL
from opentelemetry.sdk.metrics.export import MetricExporter, MetricExportResult, MetricsData
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope

from opentelemetry.instrumentation.tensorboard import _sdk_compat, lifecycle
from opentelemetry.instrumentation.tensorboard.capture import SCALAR, warn_once
from opentelemetry.instrumentation.tensorboard.environment_variables import (
    OTEL_PYTHON_TENSORBOARD_EXPORT_PROCESS,
    read_flag,
)

_logger = logging.getLogger(__name__)

EXPORT_PROCESS_ENV = OTEL_PYTHON_TENSORBOARD_EXPORT_PROCESS  # the name this module has always exported
HANDOFF_INTERVAL = 0.5  # seconds between two collections handed to the helper, unless configured
KILLED_GRACE = 10.0  # seconds the helper exports after its parent was killed; then it shuts the exporter down
_HEADER = struct.Struct(">I")
_AUTO_INSTRUMENTATION = os.path.join("opentelemetry", "instrumentation", "auto_instrumentation")


def target(exporter_class: type) -> str:
    """``module:Class``: how an exporter class is named to the helper, which imports it afresh."""
    return f"{exporter_class.__module__}:{exporter_class.__qualname__}"


def load(name: str) -> type[MetricExporter]:
    """The class ``"module:Class"`` (see :func:`target`) names."""
    module, _, qualname = name.partition(":")
    found: Any = importlib.import_module(module)
    for part in qualname.split("."):
        found = getattr(found, part)
    return found


def enabled() -> bool:
    """Whether push exporters go to a helper process (``OTEL_PYTHON_TENSORBOARD_EXPORT_PROCESS``, default true)."""
    return read_flag(OTEL_PYTHON_TENSORBOARD_EXPORT_PROCESS, True)


def interval_millis(configured: float | None = None) -> float | None:
    """Collection interval (ms) of a reader whose exporter runs in the helper (see the module docstring).

    ``configured`` (ms) wins; then ``OTEL_METRIC_EXPORT_INTERVAL``, for which ``None`` lets the
    SDK's reader read it; then ``HANDOFF_INTERVAL``.
    """
    if configured is not None:
        return configured
    if os.environ.get(OTEL_METRIC_EXPORT_INTERVAL, "").strip():
        return None
    return HANDOFF_INTERVAL * 1000


# Wire format --------------------------------------------------------------------------------------

# MetricsData is plain frozen dataclasses, but resources and scopes hold their attributes in
# BoundedAttributes, which hold a lock: they travel as their public parts.
_DISPATCH = copyreg.dispatch_table.copy()
_DISPATCH[Resource] = lambda r: (Resource, (dict(r.attributes), r.schema_url))
_DISPATCH[InstrumentationScope] = lambda s: (
    InstrumentationScope,
    (s.name, s.version, s.schema_url, dict(s.attributes) if s.attributes else None),
)
_DISPATCH[BoundedAttributes] = lambda a: (dict, (dict(a),))


def dumps(data: MetricsData) -> bytes:
    """``MetricsData`` as one pickle (blocks of points as they are)."""
    buffer = io.BytesIO()
    pickler = pickle.Pickler(buffer, protocol=pickle.HIGHEST_PROTOCOL)
    pickler.dispatch_table = _DISPATCH
    pickler.dump(data)
    return buffer.getvalue()


def _write(stream: IO[bytes], message: tuple) -> None:
    payload = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(_HEADER.pack(len(payload)) + payload)
    stream.flush()


def _read(stream: IO[bytes]) -> tuple | None:
    header = stream.read(_HEADER.size)
    if len(header) < _HEADER.size:
        return None
    (size,) = _HEADER.unpack(header)
    payload = stream.read(size)
    if len(payload) < size:
        return None
    return pickle.loads(payload)  # the other end is this process's parent or child, nothing else


# The exporting process's side -----------------------------------------------------------------------


class ProcessMetricExporter(MetricExporter):
    """Exports through ``exporter_class(**kwargs)`` running in a helper process (see the module docstring).

    The exporter is also made here, once: its constructor checks the arguments where the caller
    sees the error, its preferred temporality and aggregation tell the reader what to collect, and
    it exports in process if no helper can be started.
    """

    def __init__(self, exporter_class: type[MetricExporter], kwargs: Mapping[str, Any] | None = None) -> None:
        self._kwargs = dict(kwargs or {})
        self._local = exporter_class(**self._kwargs)
        # The reader collects what the real exporter prefers (the MLflow exporter: DELTA).
        temporality, aggregation = _sdk_compat.exporter_preferences(self._local)
        super().__init__(preferred_temporality=temporality, preferred_aggregation=aggregation)
        self._target = target(exporter_class)
        self._pid = os.getpid()
        self._proc: subprocess.Popen[bytes] | None = None
        self._in_process = False
        self._closed = False
        self._write_lock = threading.Lock()
        self._cond = threading.Condition()
        self._flushed: dict[int, bool] = {}
        self._sequence = 0
        self._alive = False
        lifecycle.reset_in_forked_child(self)

    @property
    def exporter(self) -> MetricExporter:
        """The exporter as made in this process (it exports only if no helper could be started)."""
        return self._local

    @property
    def pid(self) -> int | None:
        """The helper's process id, once it runs."""
        return self._proc.pid if self._proc is not None else None

    # MetricExporter ------------------------------------------------------------------------------

    def export(self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any) -> MetricExportResult:
        if os.getpid() != self._pid:
            report_forked(metrics_data, self._pid)
            return MetricExportResult.SUCCESS
        if self._closed:
            return MetricExportResult.FAILURE
        if self._proc is None and not self._in_process:
            self._start()
        if self._in_process:
            return self._local.export(metrics_data, timeout_millis, **kwargs)
        try:
            payload = dumps(metrics_data)
        except Exception as exc:  # noqa: BLE001 - one bad collection must not stop the next ones
            warn_once(f"pickle:{type(exc).__name__}", "tensorboard: an export could not be packed (%r)", exc)
            return MetricExportResult.FAILURE
        return MetricExportResult.SUCCESS if self._send(("export", payload)) else MetricExportResult.FAILURE

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        """Waits until the helper's exporter has flushed what it was handed; not when the process is being killed."""
        if os.getpid() != self._pid:
            return True
        if self._in_process:
            return self._local.force_flush(timeout_millis)
        if self._proc is None or lifecycle.killed():
            return True
        with self._cond:
            self._sequence += 1
            sequence = self._sequence
        timeout = timeout_millis / 1000
        if not self._send(("flush", sequence, timeout)):
            return False
        deadline = time.monotonic() + timeout
        with self._cond:
            while sequence not in self._flushed and self._alive:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
            return self._flushed.pop(sequence, False)

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        """Shuts the helper's exporter down with the process's outcome and waits for it, unless being killed."""
        if os.getpid() != self._pid or self._closed:
            return
        self._closed = True
        if self._in_process or self._proc is None:
            self._local.shutdown(timeout_millis, **kwargs)
            return
        self._local.shutdown(timeout_millis)  # never exported: it has nothing to deliver
        timeout = float(kwargs.get("timeout", timeout_millis)) / 1000
        wait = not lifecycle.killed()
        with lifecycle.flushing():
            sent = self._send(("close", lifecycle.outcome(), timeout if wait else min(timeout, KILLED_GRACE)))
            with suppress(OSError):
                self._proc.stdin.close()  # type: ignore[union-attr]
            if sent and wait:
                self._wait_exit(timeout + 5.0)

    # The helper ----------------------------------------------------------------------------------

    def _start(self) -> None:
        try:
            if not sys.executable:
                raise OSError("sys.executable is empty")
            code = f"import sys; del sys.path[0]; from {__name__} import main; main()"
            proc = subprocess.Popen(
                [sys.executable, "-c", code],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                env=_helper_env(),
                close_fds=True,
                start_new_session=True,  # Ctrl-C and the terminal's hang-up are the training script's
            )
            assert proc.stdin is not None
            _write(proc.stdin, ("config", {"exporter": self._target, "kwargs": self._kwargs, "argv": sys.argv}))
        except (OSError, pickle.PicklingError) as exc:
            _logger.warning("tensorboard: cannot start the export process (%s); exporting from this process", exc)
            self._in_process = True
            return
        self._proc, self._alive = proc, True
        threading.Thread(target=self._listen, args=(proc,), name="ExportProcessListener", daemon=True).start()

    def _send(self, message: tuple) -> bool:
        proc = self._proc
        if proc is None or proc.stdin is None:
            return False
        try:
            with self._write_lock:
                _write(proc.stdin, message)
            return True
        except (OSError, ValueError) as exc:  # ValueError: the pipe was closed meanwhile
            warn_once(
                f"send:{proc.pid}",
                "tensorboard: cannot hand metrics to export process %d (%s: %s); they are lost",
                proc.pid,
                type(exc).__name__,
                exc,
            )
            return False

    def _wait_exit(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._alive:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    _logger.warning(
                        "tensorboard: export process %d did not finish within %.0f s; it goes on alone",
                        self.pid,
                        timeout,
                    )
                    return
                self._cond.wait(remaining)

    def _listen(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        try:
            while True:
                try:
                    message = _read(proc.stdout)
                except Exception:  # noqa: BLE001 - a torn message: the helper is gone
                    message = None
                if message is None:
                    break
                if message[0] == "log":
                    level, name, text = message[1:]
                    logging.getLogger(name).log(level, "%s", text)
                elif message[0] == "flushed":
                    with self._cond:
                        self._flushed[message[1]] = message[2]
                        self._cond.notify_all()
        finally:
            code = proc.wait()
            with self._cond:
                self._alive = False
                self._cond.notify_all()
            if code != 0 and not self._closed:
                _logger.error(
                    "tensorboard: export process %d exited unexpectedly (code %s); what it held is lost", proc.pid, code
                )

    def _after_fork(self) -> None:
        # A forked child (a DataLoader worker) must not hold the pipe: the helper would not see its
        # parent's end while the child lives.
        proc = self._proc
        if proc is not None:
            for stream in (proc.stdin, proc.stdout):
                if stream is not None:
                    with suppress(OSError):
                        os.close(stream.fileno())
        self._proc, self._alive = None, False


def report_forked(data: MetricsData, owner: int) -> None:
    """Says once that a forked child (a DataLoader worker) recorded points its parent's exporter will not send."""
    for resource_metrics in data.resource_metrics:
        for scope_metrics in resource_metrics.scope_metrics:
            for metric in scope_metrics.metrics:
                if metric.name == SCALAR and any(p.exemplars for p in getattr(metric.data, "data_points", ())):
                    warn_once(
                        "forked",
                        "tensorboard: points recorded in forked child process %d are not exported "
                        "(the exporter belongs to process %d)",
                        os.getpid(),
                        owner,
                    )
                    return


def _helper_env() -> dict[str, str]:
    """The environment, without ``opentelemetry-instrument``'s start-up hook: the helper captures nothing."""
    env = dict(os.environ)
    paths = [
        path
        for path in env.get("PYTHONPATH", "").split(os.pathsep)
        if path and not path.rstrip("/\\").endswith(_AUTO_INSTRUMENTATION)
    ]
    if paths:
        env["PYTHONPATH"] = os.pathsep.join(paths)
    else:
        env.pop("PYTHONPATH", None)
    return env


# The helper process -----------------------------------------------------------------------------------


class _Terminated(Exception):  # noqa: N818 - a signal, not an error
    pass


class _Channel:
    def __init__(self, stream: IO[bytes]) -> None:
        self.stream = stream
        self.lock = threading.Lock()
        self.open = True

    def send(self, message: tuple) -> bool:
        if not self.open:
            return False
        try:
            with self.lock:
                _write(self.stream, message)
            return True
        except (OSError, ValueError):
            self.open = False
            return False


class _Forward(logging.Handler):
    """Sends the helper's log records to its parent; to stderr once the parent is gone."""

    def __init__(self, channel: _Channel) -> None:
        super().__init__(logging.INFO)
        self.channel = channel

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if record.exc_info:
            text += "\n" + "".join(traceback.format_exception(*record.exc_info)).rstrip()
        if not self.channel.send(("log", record.levelno, record.name, text)):
            sys.stderr.write(f"{record.levelname} {record.name}: {text}\n")


def main() -> None:
    """The helper: builds the exporter and exports what the parent sends until ``close`` or the pipe's end."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with suppress(OSError):
        os.nice(10)
    inbox = sys.stdin.buffer
    channel = _Channel(os.fdopen(os.dup(1), "wb"))
    os.dup2(2, 1)  # anything printed goes to stderr, never into the channel
    root = logging.getLogger()
    root.addHandler(_Forward(channel))
    root.setLevel(logging.INFO)

    def terminated(_signum: int, _frame: object) -> None:
        raise _Terminated

    signal.signal(signal.SIGTERM, terminated)  # before the exporter, which leaves a handler alone
    first = _read(inbox)
    if first is None or first[0] != "config":
        return
    config: dict[str, Any] = first[1]
    sys.argv = list(config.get("argv") or [""])  # what the exporter reads of its script (run names, source)
    exporter: MetricExporter = load(config["exporter"])(**config["kwargs"])
    export_payload = getattr(exporter, "export_payload", None)
    status, timeout = lifecycle.KILLED, KILLED_GRACE
    try:
        while True:
            message = _read(inbox)
            if message is None:  # the parent is gone without a word: killed
                channel.open = False
                break
            if message[0] == "export":
                try:
                    if export_payload is not None:  # it keeps the pickle as it came (the durable exporter)
                        export_payload(message[1])
                    else:
                        exporter.export(pickle.loads(message[1]))
                except Exception:  # an exporter must not take the helper down
                    _logger.exception("tensorboard: the export process's exporter failed")
            elif message[0] == "flush":
                threading.Thread(target=_flush, args=(exporter, channel, *message[1:]), daemon=True).start()
            elif message[0] == "close":
                status, timeout = message[1], message[2]
                if status == lifecycle.KILLED:  # the parent is leaving without reading: speak for ourselves
                    channel.open = False
                break
    except _Terminated:
        status, timeout = lifecycle.KILLED, 1.0
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM ends the helper at once
    with lifecycle.ending_as(status):
        exporter.shutdown(timeout_millis=timeout * 1000)


def _flush(exporter: MetricExporter, channel: _Channel, sequence: int, timeout: float) -> None:
    channel.send(("flushed", sequence, exporter.force_flush(timeout_millis=timeout * 1000)))
