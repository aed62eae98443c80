"""The durable spool: rows MLflow could not take yet, kept on local disk in order.

A segment is a JSON-lines file ``<prefix>-<seq>.jsonl`` (prefix = process start in ns and pid, so
names sort in write order per process). Its first line is a header (tracking URI, experiment id,
pid, host); every other line is either a request-sized chunk of one run::

    {"run": {...RunKey...}, "metrics": [[key, value, timestamp_ms, step], ...], "params": {...}, "tags": {...}}

with non-finite values written ``"NaN"``, ``"Infinity"``, ``"-Infinity"``, or a terminal status::

    {"run": {...}, "status": "KILLED", "end_time": 1700000000000}

A segment is written to a temporary name, fsync'd and renamed, so a reader sees whole segments
only. A process holds an exclusive ``flock`` on ``<prefix>.lock`` while it may still read its
segments; :func:`upload_spool` claims the same lock before it sends a process's segments, so two
uploads at once (or an upload beside a running job) never send one segment twice. Re-sending a
segment is harmless (MLflow stores an identical point once), so a segment is removed only after all
of it was delivered.

The **journal** (:class:`Journal`) is the write-ahead log of the exporter's delivery: every row is
appended to it (one buffered write per export, fsync'd at most once a second) before it is queued
for MLflow. Whenever everything in it was delivered, the journal starts over holding one empty row
per run the process created (so a crash can still end them); a shutdown removes it. A journal left
behind means its process died without a shutdown (SIGKILL, OOM, a node lost): :func:`upload_spool`
(``opentelemetry-exporter-mlflow upload``, which ``tracelet upload`` runs, and the exporter itself
when it next starts on the machine) sends it and then
ends the runs that process created as ``KILLED``, at the journal's last write. Its header says
``"journal": true``; a torn last line (the process died mid-write) is ignored.
"""

from __future__ import annotations

import json
import logging
import math
import os
import socket
import sys
import time
from collections.abc import Callable, Iterable
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from opentelemetry.exporter.mlflow.environment_variables import read_spool_dir
from opentelemetry.exporter.mlflow.errors import MlflowCredentialsRefused, MlflowRejected, MlflowUnavailable
from opentelemetry.exporter.mlflow.mapping import RunBatch, RunKey
from opentelemetry.exporter.mlflow.retry import RETRY
from opentelemetry.exporter.mlflow.tracking_uri import default_tracking_uri, public_uri
from opentelemetry.exporter.mlflow.writer import MlflowWriter
from opentelemetry.instrumentation.tensorboard.journal import fsync_dir

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no advisory locks, upload trusts the user
    fcntl = None  # type: ignore[assignment]

_logger = logging.getLogger(__name__)

SUFFIX = ".jsonl"
FORMAT = 1
SYNC_SECONDS = 1.0  # the journal is fsync'd at most this often: a power loss costs at most this much
UPLOAD_COMMAND = "opentelemetry-exporter-mlflow upload"
"""The command that sends a spool (:func:`upload_spool`), as messages tell users to run it."""


def default_spool_dir() -> Path:
    """``$OTEL_EXPORTER_MLFLOW_SPOOL_DIR`` (or its alias ``$TRACELET_SPOOL_DIR``), else
    ``$XDG_CACHE_HOME/tracelet/spool`` (``~/.cache/tracelet/spool``)."""
    configured = read_spool_dir()
    if configured:
        return Path(configured).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME", "").strip() or "~/.cache"
    return Path(cache).expanduser() / "tracelet" / "spool"


@dataclass
class Status:
    """A run's terminal status waiting to be set."""

    run: RunKey
    status: str
    end_ms: int


Entry = RunBatch | Status


def _run_to_json(run: RunKey) -> dict[str, Any]:
    return {
        "instance_id": run.instance_id,
        "experiment_name": run.experiment_name,
        "run_name": run.run_name,
        "run_id": run.run_id,
        "rank": run.rank,
        "tags": [list(kv) for kv in run.tags],
        "start_time": run.start_ms,
    }


def _run_from_json(data: dict[str, Any]) -> RunKey:
    return RunKey(
        instance_id=str(data.get("instance_id") or ""),
        experiment_name=data.get("experiment_name"),
        run_name=data.get("run_name"),
        run_id=data.get("run_id"),
        rank=data.get("rank"),
        tags=tuple((str(k), str(v)) for k, v in data.get("tags") or ()),
        start_ms=data.get("start_time") if isinstance(data.get("start_time"), int) else None,
    )


def _value(value: float) -> float | str:
    if math.isfinite(value):
        return value
    return "NaN" if value != value else ("Infinity" if value > 0 else "-Infinity")


def encode(entry: Entry) -> str:
    """One spool line."""
    if isinstance(entry, Status):
        return json.dumps({"run": _run_to_json(entry.run), "status": entry.status, "end_time": entry.end_ms})
    isfinite = math.isfinite
    metrics = [[k, v if isfinite(v) else _value(v), t, s] for k, v, t, s in entry.metrics]
    line: dict[str, Any] = {"run": _run_to_json(entry.run), "metrics": metrics}
    if entry.params:
        line["params"] = entry.params
    if entry.tags:
        line["tags"] = entry.tags
    return json.dumps(line, allow_nan=False)


def decode(line: str) -> Entry:
    data = json.loads(line)
    run = _run_from_json(data["run"])
    if "status" in data:
        return Status(run, str(data["status"]), int(data["end_time"]))
    metrics = [(str(k), float(v), int(t), int(s)) for k, v, t, s in data.get("metrics") or ()]
    return RunBatch(run, metrics, dict(data.get("params") or {}), dict(data.get("tags") or {}))


def points(entries: Iterable[Entry]) -> int:
    return sum(len(e.metrics) for e in entries if isinstance(e, RunBatch))


class Spool:
    """This process's segments in ``directory``."""

    def __init__(self, directory: Path | str, tracking_uri: str, experiment_id: str | None = None) -> None:
        self.directory = Path(directory).expanduser()
        self.prefix = f"{time.time_ns():020d}-{os.getpid()}"
        self.header = {
            "tracelet_spool": FORMAT,
            "tracking_uri": public_uri(tracking_uri),
            "experiment_id": experiment_id,
            "pid": os.getpid(),
            "host": socket.gethostname(),
        }
        self._seq = 0
        self._lock: IO[str] | None = None

    def write(self, entries: Iterable[Entry]) -> Path:
        """Writes a new segment durably; returns its path."""
        self.directory.mkdir(parents=True, exist_ok=True)
        self._hold_lock()
        self._seq += 1
        path = self.directory / f"{self.prefix}-{self._seq:06d}{SUFFIX}"
        temporary = path.with_suffix(".tmp")
        try:
            with open(temporary, "w", encoding="utf-8") as file:
                file.write(json.dumps(self.header) + "\n")
                for entry in entries:
                    file.write(encode(entry) + "\n")
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, path)
        except OSError:
            with suppress(OSError):
                temporary.unlink()  # a full disk keeps no partial segment
            raise
        fsync_dir(self.directory)
        return path

    def open_journal(self) -> tuple[Path, IO[str]]:
        """A new journal file of this process (see :class:`Journal`), its header written."""
        self.directory.mkdir(parents=True, exist_ok=True)
        self._hold_lock()
        self._seq += 1
        path = self.directory / f"{self.prefix}-{self._seq:06d}{SUFFIX}"
        file = open(path, "w", encoding="utf-8")  # noqa: SIM115 - owned by the Journal
        file.write(json.dumps({**self.header, "journal": True}) + "\n")
        file.flush()
        os.fsync(file.fileno())
        fsync_dir(self.directory)
        return path, file

    def prepend(self, path: Path, entries: list[Entry]) -> None:
        """Puts ``entries`` (older rows) at the head of an existing segment, atomically."""
        header, existing = read(path)
        temporary = path.with_suffix(".tmp")
        with open(temporary, "w", encoding="utf-8") as file:
            file.write(json.dumps(header) + "\n")
            for entry in [*entries, *existing]:
                file.write(encode(entry) + "\n")
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
        fsync_dir(self.directory)

    def _hold_lock(self) -> None:
        if self._lock is not None or fcntl is None:
            return
        lock = open(self.directory / f"{self.prefix}.lock", "w")  # noqa: SIM115 - held until release()
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        lock.write(str(os.getpid()))
        lock.flush()
        self._lock = lock

    def release(self) -> None:
        """Lets :func:`upload_spool` take this process's segments."""
        lock, self._lock = self._lock, None
        if lock is not None:
            with suppress(OSError):
                os.unlink(lock.name)
            lock.close()


def read(path: Path) -> tuple[dict[str, Any], list[Entry]]:
    """A segment's header and entries (a journal's torn last line, written as its process died, is left out)."""
    with open(path, encoding="utf-8") as file:
        lines = file.readlines()
    header = json.loads(lines[0] if lines else "{}")
    if header.get("tracelet_spool") != FORMAT:
        raise ValueError(f"{path} is not a tracelet spool segment (format {FORMAT})")
    entries = []
    for index, line in enumerate(lines[1:], start=1):
        if not line.strip():
            continue
        try:
            entries.append(decode(line))
        except (ValueError, KeyError, TypeError):
            if header.get("journal") and index == len(lines) - 1 and not line.endswith("\n"):
                break  # torn by the process's death: the rows before it are whole
            raise
    return header, entries


class Journal:
    """The write-ahead log of one sender: rows reach local disk before delivery (see the module docstring).

    Not thread-safe: the sender calls it under its own lock. A journal that cannot be written
    (read-only or full disk) reports once and stops; delivery goes on without it.
    """

    def __init__(self, spool: Spool) -> None:
        self._spool = spool
        self._path: Path | None = None
        self._file: IO[str] | None = None
        self._synced = 0.0
        self._settled = True  # holds nothing undelivered
        self.broken = ""

    def append(self, entries: Iterable[Entry]) -> None:
        if self.broken:
            return
        self._settled = False
        try:
            if self._file is None:
                self._path, self._file = self._spool.open_journal()
            self._file.write("".join(encode(entry) + "\n" for entry in entries))
            self._file.flush()  # in the kernel now: a killed process loses nothing of it
            now = time.monotonic()
            if now - self._synced >= SYNC_SECONDS:
                os.fsync(self._file.fileno())  # on the disk now: a power loss costs at most SYNC_SECONDS
                self._synced = now
        except OSError as exc:
            self.broken = f"{type(exc).__name__}: {exc}"
            _logger.warning(
                "MLflow exporter: cannot write the journal in %s (%s); points are delivered without it, and a "
                "killed process loses those not yet delivered",
                self._spool.directory,
                self.broken,
            )
            self.discard()

    def settle(self, runs: Iterable[RunKey]) -> None:
        """Everything appended is in MLflow: start over with one empty row per run of ``runs``."""
        if self._settled or self.broken:
            return
        self.discard()
        self.append([RunBatch(run) for run in runs])
        self._settled = True

    def discard(self) -> None:
        """Removes the journal file: everything in it is in MLflow or in a spool segment."""
        file, path, self._file, self._path = self._file, self._path, None, None
        if file is not None:
            with suppress(OSError):
                file.close()
        if path is not None:
            with suppress(OSError):
                path.unlink()


def _claim(directory: Path, prefix: str) -> IO[str] | None:
    """The lock of ``prefix``'s segments, held, or ``None`` while a running process (or upload) holds it."""
    if fcntl is None:
        return open(os.devnull, "a")
    try:
        lock = open(directory / f"{prefix}.lock", "a")  # noqa: SIM115 - released by _release
    except OSError:
        return None
    try:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        lock.close()
        return None
    return lock


def _release(directory: Path, prefix: str, lock: IO[str]) -> None:
    if not list(directory.glob(f"{prefix}-*{SUFFIX}")):
        with suppress(OSError):
            os.unlink(directory / f"{prefix}.lock")
    lock.close()


def segments(directory: Path) -> list[Path]:
    return sorted(directory.glob(f"*{SUFFIX}")) if directory.is_dir() else []


def _progress() -> Any:
    """A rich progress bar on a terminal, else nothing."""
    if not sys.stdout.isatty():
        return None
    try:
        from rich.progress import Progress  # noqa: PLC0415 - optional
    except ImportError:
        return None
    return Progress(transient=True)


def deliver(
    writer: MlflowWriter,
    entry: Entry,
    experiment_id: str | None,
    retry_for: float,
    command: str = UPLOAD_COMMAND,
    sleep: Callable[[float], object] = time.sleep,
) -> None:
    """One entry, retried by :data:`~opentelemetry.exporter.mlflow.retry.RETRY` for at most ``retry_for`` seconds.

    The retry of the commands that send synchronously (upload, ``tracelet import``), which name
    themselves in the one line they print when MLflow does not answer. Only transient failures are
    retried (:func:`~opentelemetry.exporter.mlflow.errors.classify`): refused credentials, refused
    content and unexpected errors are raised at once.
    """
    told = False

    def attempt() -> None:
        if isinstance(entry, Status):
            writer.finish(entry.run, entry.status, entry.end_ms, experiment_id)
        else:
            writer.write(entry, experiment_id)

    def retrying(error: BaseException, _wait: float) -> None:
        nonlocal told
        if not told:
            told = True
            print(f"{command}: MLflow is unavailable ({error}); retrying for up to {retry_for:g} s", flush=True)

    RETRY.with_deadline(retry_for).call(attempt, on_retry=retrying, sleep=sleep)


def _prefix(path: Path) -> str:
    return path.name.rsplit("-", 1)[0]


def _killed(entries: list[Entry], last_write_ms: int) -> list[Status]:
    """A journal's runs that its dead process created, ended ``KILLED`` when it last wrote."""
    runs = {entry.run: None for entry in entries if isinstance(entry, RunBatch) and entry.run.run_id is None}
    return [Status(run, "KILLED", last_write_ms) for run in runs]


def upload_spool(
    spool_dir: Path | str | None = None,
    tracking_uri: str | None = None,
    retry_for: float = 60.0,
    say: Callable[[str], object] | None = None,
    only_uri: str | None = None,
    command: str = UPLOAD_COMMAND,
) -> int:
    """Sends every spooled segment to MLflow in order and removes each once delivered.

    The tracking URI is ``tracking_uri`` if given, else ``MLFLOW_TRACKING_URI``, else the one
    recorded in the segment (where the points were meant to go). Segments of a still running
    process, or of another upload running now, are left alone. A journal (its process died) is
    sent and its process's runs end ``KILLED``. ``say`` reports (default: print); ``only_uri``
    keeps to segments written for that tracking URI (the exporter's recovery at start); ``command``
    is how the lines it prints name it (``tracelet upload`` names itself). Returns 0
    when nothing is left to send, 1 otherwise (MLflow unavailable for ``retry_for`` seconds, a
    segment unreadable or refused as a whole).
    """
    report = say or (lambda text: print(text, flush=True))
    directory = Path(spool_dir).expanduser() if spool_dir else default_spool_dir()
    if spool_dir and not directory.is_dir():
        if say is not None:  # the exporter's recovery: nothing was ever left here
            return 0
        report(f"{command}: no spool directory {directory}")
        return 1
    found = segments(directory)
    if not found:
        if say is None:
            report(f"{command}: nothing to upload in {directory}")
        return 0
    claims: dict[str, IO[str] | None] = {}
    busy: set[str] = set()
    writers: dict[str, MlflowWriter] = {}
    sent_points = sent_segments = killed = 0
    problems: list[str] = []
    progress = _progress() if say is None else None
    task = progress.add_task("uploading", total=len(found)) if progress else None
    if progress:
        progress.start()
    try:
        for path in found:
            if progress:
                progress.advance(task)
            prefix = _prefix(path)
            if prefix not in claims:
                claims[prefix] = _claim(directory, prefix)
            if claims[prefix] is None:
                busy.add(prefix)
                continue
            try:
                header, entries = read(path)
            except FileNotFoundError:  # sent meanwhile by an upload that held the lock before us
                continue
            except (OSError, ValueError, KeyError, TypeError) as exc:
                problems.append(f"{path.name}: unreadable ({type(exc).__name__}: {exc}); kept")
                continue
            if only_uri is not None and header.get("tracking_uri") != public_uri(only_uri):
                continue
            uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or header.get("tracking_uri")
            uri = uri or default_tracking_uri()
            try:
                writer = writers.get(uri) or writers.setdefault(uri, MlflowWriter(uri))
            except (ValueError, RuntimeError) as exc:
                problems.append(f"{path.name}: {exc}; kept")
                continue
            statuses = []
            if header.get("journal"):
                with suppress(OSError):
                    statuses = _killed(entries, int(path.stat().st_mtime * 1000))
            try:
                for entry in [*entries, *statuses]:
                    deliver(writer, entry, header.get("experiment_id"), retry_for, command)
            except MlflowCredentialsRefused as exc:
                refused = f"MLflow at {public_uri(uri)} refused the credentials ({exc}); {path.name} and later kept"
                problems.append(refused)
                break
            except MlflowUnavailable as exc:
                problems.append(f"MLflow at {public_uri(uri)} is unavailable ({exc}); {path.name} and later kept")
                break
            except MlflowRejected as exc:
                problems.append(f"{path.name}: MLflow refused it ({exc}); kept")
                continue
            sent_points += points(entries)
            sent_segments += 1
            killed += len(statuses)
            path.unlink()
    finally:
        if progress:
            progress.stop()
        for writer in writers.values():
            writer.close()
        for prefix, lock in claims.items():
            if lock is not None:
                _release(directory, prefix, lock)
    left = len(segments(directory))
    if say is None or sent_segments or problems:
        report(
            f"{command}: sent {sent_points} points from {sent_segments} segment(s) in {directory}"
            + (f", ended {killed} run(s) of killed processes as KILLED" if killed else "")
            + f"; {left} segment(s) left"
            + (f" ({len(busy)} process(es) still running or uploading)" if busy else "")
        )
    for problem in problems:
        report(f"{command}: {problem}")
    return 0 if left == 0 else 1
