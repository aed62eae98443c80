"""The delivery process: mapping, run resolution, retries, spool and the MLflow store, off the training process.

Everything delivery does is Python that would otherwise run on threads of the training process,
where a busy thread stalls the training thread at every point torch releases and retakes the GIL
(and ``import mlflow`` with its sqlite store costs seconds of start-up). So the exporter starts one
helper process (executed afresh, never forked: nothing of the training process is copied into it)
and hands it each export as one :mod:`~opentelemetry.exporter.mlflow.frames` frame over a pipe.
The helper maps the frames (:class:`~opentelemetry.exporter.mlflow.mapping.Mapper`, the same
mapping as tracelet's OTLP receiver) and delivers the rows with a
:class:`~opentelemetry.exporter.mlflow.sender.Sender`.

Protocol, both ways a 4-byte length and a pickle (the pipe joins a process to the one it started):

- to the helper: ``("config", dict)`` first, then ``("frame", bytes)``, ``("flush", n, timeout)``,
  ``("close", status, timeout)``;
- back: ``("log", level, logger, message)`` (the helper's log records, re-emitted by the exporting
  process's own ``logging``), ``("delivered", total)``, ``("flushed", n, ok)``, ``("closed",)``.

Life cycle: the helper lives as long as its parent. A ``close`` (the provider shuts down) ends the
runs with the status the parent saw (FINISHED, FAILED, KILLED); the end of the pipe without one
(the parent was killed: SIGKILL, OOM) ends them KILLED. Either way the helper delivers for at most
its timeout (``KILLED_GRACE`` seconds after a kill, less than a scheduler's usual grace period),
spools what is left and exits. It ignores Ctrl-C (the terminal's, meant for the training script)
and runs at a lower CPU priority, so training wins a contended core. If the helper cannot be
started, delivery runs on a thread of the exporting process instead (:class:`InThreadDelivery`),
and ``OTEL_EXPORTER_MLFLOW_DELIVERY=thread`` asks for that.
"""

from __future__ import annotations

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
import weakref
from contextlib import suppress
from pathlib import Path
from typing import IO, Any

from opentelemetry.exporter.mlflow.frames import decode
from opentelemetry.exporter.mlflow.lifecycle import KILLED
from opentelemetry.exporter.mlflow.mapping import Mapper

_logger = logging.getLogger(__name__)

KILLED_GRACE = 10.0  # seconds the helper delivers after its parent was killed, before it spools the rest
DELIVERY_ENV = "OTEL_EXPORTER_MLFLOW_DELIVERY"
_HEADER = struct.Struct(">I")
_AUTO_INSTRUMENTATION = os.path.join("opentelemetry", "instrumentation", "auto_instrumentation")


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
    return pickle.loads(payload)


class Delivery:
    """Frames in, rows into MLflow: the mapping and the sender, wherever they run."""

    def __init__(self, config: dict[str, Any], progress: Any = None) -> None:
        from opentelemetry.exporter.mlflow.sender import Sender  # noqa: PLC0415 - requests and the spool, here only

        self.mapper = Mapper(config.get("experiment_name"))
        self.sender = Sender(
            config["tracking_uri"],
            Path(config["spool_dir"]),
            experiment_id=config.get("experiment_id"),
            run_id=config.get("run_id"),
            instance=config.get("instance", ""),
            source_tags=config.get("source_tags"),
            max_queue_points=config.get("max_queue_points", 200_000),
            request_timeout=config.get("request_timeout", 10.0),
            progress=progress,
        )

    def submit(self, payload: bytes) -> None:
        try:
            batches = self.mapper.map(decode(payload))
        except Exception as exc:  # noqa: BLE001 - one bad collection must not stop the next ones
            self.mapper.report("map", "MLflow exporter: a collection could not be mapped and is skipped (%r)", exc)
            return
        if batches:
            self.sender.submit(batches)


class InThreadDelivery:
    """Delivery on a thread of the exporting process: the fallback when no helper process can run."""

    def __init__(self, config: dict[str, Any]) -> None:
        self._delivery = Delivery(config)
        self.sender = self._delivery.sender

    @property
    def delivered_points(self) -> int:
        return self.sender.delivered_points

    def send(self, payload: bytes) -> None:
        self._delivery.submit(payload)

    def flush(self, timeout: float) -> bool:
        return self._delivery.sender.flush(timeout)

    def close(self, status: str, timeout: float, wait: bool = True) -> None:
        self._delivery.sender.shutdown(status, timeout if wait else min(timeout, KILLED_GRACE))


_clients: weakref.WeakSet[DeliveryProcess] = weakref.WeakSet()


class DeliveryProcess:
    """The exporting process's handle on its helper process (see the module docstring)."""

    def __init__(self, config: dict[str, Any]) -> None:
        self._config = config
        self._proc: subprocess.Popen[bytes] | None = None
        self._write_lock = threading.Lock()
        self._cond = threading.Condition()
        self._flushed: dict[int, bool] = {}
        self._sequence = 0
        self._closed = False
        self._alive = False
        self._pid = os.getpid()
        self.delivered_points = 0
        self._start()
        _clients.add(self)

    def _start(self) -> None:
        """Starts the helper; raises ``OSError`` when it cannot."""
        if not sys.executable:
            raise OSError("no Python interpreter to run the delivery process with (sys.executable is empty)")
        code = "import sys; del sys.path[0]; from opentelemetry.exporter.mlflow.worker import main; main()"
        proc = subprocess.Popen(
            [sys.executable, "-c", code],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=_helper_env(),
            close_fds=True,
            start_new_session=True,  # Ctrl-C and the terminal's hang-up are the training script's
        )
        assert proc.stdin is not None and proc.stdout is not None
        try:
            _write(proc.stdin, ("config", self._config))
        except OSError:
            proc.kill()
            raise
        self._proc, self._alive = proc, True
        threading.Thread(target=self._listen, args=(proc,), name="MlflowDeliveryListener", daemon=True).start()

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def send(self, payload: bytes) -> None:
        self._send(("frame", payload))

    def flush(self, timeout: float) -> bool:
        """Waits until the helper has delivered everything sent so far."""
        with self._cond:
            self._sequence += 1
            sequence = self._sequence
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

    def close(self, status: str, timeout: float, wait: bool = True) -> None:
        """Ends the runs with ``status``; waits for the helper to finish unless ``wait`` is false.

        Without waiting, everything sent is already in the pipe: the helper reads it, delivers
        for at most ``KILLED_GRACE`` seconds, spools the rest and exits on its own.
        """
        if self._closed:
            return
        self._closed = True
        sent = self._send(("close", status, timeout if wait else min(timeout, KILLED_GRACE)))
        proc = self._proc
        if proc is not None and proc.stdin is not None:
            with suppress(OSError):
                proc.stdin.close()
        if not (sent and wait):
            return
        deadline = time.monotonic() + timeout + 5.0  # the helper's own deadline, and its last messages
        with self._cond:
            while self._alive:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    _logger.warning(
                        "MLflow exporter: the delivery process %d did not finish within %.0f s; it goes on "
                        "delivering and spools what it cannot",
                        self.pid,
                        timeout,
                    )
                    return
                self._cond.wait(remaining)

    def _send(self, message: tuple) -> bool:
        proc = self._proc
        if proc is None or proc.stdin is None or os.getpid() != self._pid:
            return False
        try:
            with self._write_lock:
                _write(proc.stdin, message)
            return True
        except (OSError, ValueError) as exc:  # ValueError: the pipe was closed meanwhile
            _logger.error(
                "MLflow exporter: cannot hand points to the delivery process %d (%s: %s); those points are lost",
                proc.pid,
                type(exc).__name__,
                exc,
            )
            return False

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
                self._receive(message)
        finally:
            code = proc.wait()
            with self._cond:
                self._alive = False
                self._cond.notify_all()
            if code != 0 and not self._closed:
                _logger.error(
                    "MLflow exporter: the delivery process %d exited unexpectedly (code %s); points sent to it and "
                    "not delivered or spooled are lost",
                    proc.pid,
                    code,
                )

    def _receive(self, message: tuple) -> None:
        kind = message[0]
        if kind == "log":
            _level, name, text = message[1:]
            logging.getLogger(name).log(_level, "%s", text)
        elif kind == "delivered":
            self.delivered_points = message[1]
        elif kind == "flushed":
            with self._cond:
                self._flushed[message[1]] = message[2]
                self._cond.notify_all()

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


def _close_after_fork() -> None:
    for client in list(_clients):
        client._after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_after_fork)


def _helper_env() -> dict[str, str]:
    """The environment, without ``opentelemetry-instrument``'s start-up hook: the helper captures nothing."""
    env = dict(os.environ)
    paths = [
        p
        for p in env.get("PYTHONPATH", "").split(os.pathsep)
        if p and not p.rstrip("/\\").endswith(_AUTO_INSTRUMENTATION)
    ]
    if paths:
        env["PYTHONPATH"] = os.pathsep.join(paths)
    else:
        env.pop("PYTHONPATH", None)
    env["OTEL_SDK_DISABLED"] = "true"
    return env


def start(config: dict[str, Any]) -> DeliveryProcess | InThreadDelivery:
    """A helper process for ``config``; a thread where none can run, or if ``OTEL_EXPORTER_MLFLOW_DELIVERY=thread``."""
    if os.environ.get(DELIVERY_ENV, "process").strip().lower() != "thread":
        try:
            return DeliveryProcess(config)
        except OSError as exc:
            _logger.warning(
                "MLflow exporter: cannot start the delivery process (%s); delivering from this process instead",
                exc,
            )
    return InThreadDelivery(config)


# The helper process -----------------------------------------------------------------------------


class _Terminated(Exception):  # noqa: N818 - a signal, not an error
    pass


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


def main() -> None:
    """The helper process: reads the parent's messages until ``close`` or the end of the pipe."""
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

    first = _read(inbox)
    if first is None or first[0] != "config":
        return
    config: dict[str, Any] = first[1]
    delivery = Delivery(config, progress=lambda total: channel.send(("delivered", total)))
    status, timeout = KILLED, min(float(config.get("export_timeout", 30.0)), KILLED_GRACE)
    signal.signal(signal.SIGTERM, terminated)
    try:
        while True:
            message = _read(inbox)
            if message is None:  # the parent is gone without a word: killed
                break
            kind = message[0]
            if kind == "frame":
                delivery.submit(message[1])
            elif kind == "flush":
                threading.Thread(target=_flush, args=(delivery, channel, *message[1:]), daemon=True).start()
            elif kind == "close":
                status, timeout = message[1], message[2]
                break
    except _Terminated:
        status, timeout = KILLED, min(timeout, 1.0)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM ends the helper at once
    delivery.sender.shutdown(status, timeout)
    channel.send(("closed",))


def _flush(delivery: Delivery, channel: _Channel, sequence: int, timeout: float) -> None:
    channel.send(("flushed", sequence, delivery.sender.flush(timeout)))
