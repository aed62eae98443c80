"""The durable spool: rows MLflow could not take yet, kept on local disk in order.

A segment is a JSON-lines file ``<prefix>-<seq>.jsonl`` (prefix = process start in ns and pid, so
names sort in write order per process). Its first line is a header (tracking URI, experiment id,
pid, host); every other line is either a request-sized chunk of one run::

    {"run": {...RunKey...}, "metrics": [[key, value, timestamp_ms, step], ...], "params": {...}, "tags": {...}}

with non-finite values written ``"NaN"``, ``"Infinity"``, ``"-Infinity"``, or a terminal status::

    {"run": {...}, "status": "KILLED", "end_time": 1700000000000}

A segment is written to a temporary name, fsync'd and renamed, so a reader sees whole segments
only. A process holds an exclusive ``flock`` on ``<prefix>.lock`` while it may still read its
segments; :func:`upload_spool` leaves those alone. Re-sending a segment is harmless (MLflow stores an
identical point once), so a segment is removed only after all of it was delivered.
"""

from __future__ import annotations

import json
import logging
import math
import os
import socket
import sys
import time
from collections.abc import Iterable, Iterator
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from opentelemetry.exporter.mlflow.delivery import (
    MlflowRejected,
    MlflowUnavailable,
    MlflowWriter,
    default_tracking_uri,
    public_uri,
)
from opentelemetry.exporter.mlflow.mapping import RunBatch, RunKey

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no advisory locks, upload trusts the user
    fcntl = None  # type: ignore[assignment]

_logger = logging.getLogger(__name__)

SUFFIX = ".jsonl"
FORMAT = 1


def default_spool_dir() -> Path:
    """``$TRACELET_SPOOL_DIR``, else ``$XDG_CACHE_HOME/tracelet/spool`` (``~/.cache/tracelet/spool``)."""
    configured = os.environ.get("TRACELET_SPOOL_DIR", "").strip()
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
        with open(temporary, "w", encoding="utf-8") as file:
            file.write(json.dumps(self.header) + "\n")
            for entry in entries:
                file.write(encode(entry) + "\n")
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
        _fsync_dir(self.directory)
        return path

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
        _fsync_dir(self.directory)

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
    """A segment's header and entries."""
    with open(path, encoding="utf-8") as file:
        lines = iter(file)
        header = json.loads(next(lines, "{}"))
        if header.get("tracelet_spool") != FORMAT:
            raise ValueError(f"{path} is not a tracelet spool segment (format {FORMAT})")
        return header, [decode(line) for line in lines if line.strip()]


def _fsync_dir(directory: Path) -> None:
    with suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _in_use(directory: Path, prefix: str) -> bool:
    """Whether a running process still owns the segments of ``prefix`` (stale locks are removed)."""
    lock_path = directory / f"{prefix}.lock"
    if fcntl is None or not lock_path.exists():
        return False
    try:
        with open(lock_path, "a") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)
    except BlockingIOError:
        return True
    except OSError:
        return False
    with suppress(OSError):
        lock_path.unlink()
    return False


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


def _deliver(writer: MlflowWriter, entry: Entry, experiment_id: str | None, retry_for: float) -> None:
    """One entry, retried while MLflow is unavailable for at most ``retry_for`` seconds."""
    deadline = time.monotonic() + retry_for
    delay = 0.5
    while True:
        try:
            if isinstance(entry, Status):
                writer.finish(entry.run, entry.status, entry.end_ms, experiment_id)
            else:
                writer.write(entry, experiment_id)
            return
        except MlflowUnavailable as exc:
            if time.monotonic() + delay > deadline:
                raise
            if delay == 0.5:
                print(f"tracelet upload: MLflow is unavailable ({exc}); retrying for up to {retry_for:g} s", flush=True)
            time.sleep(delay)
            delay = min(delay * 2, 5.0)


def _entries(paths: list[Path]) -> Iterator[tuple[Path, dict[str, Any] | None, list[Entry], str | None]]:
    for path in paths:
        try:
            header, entries = read(path)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            yield path, None, [], f"{type(exc).__name__}: {exc}"
            continue
        yield path, header, entries, None


def upload_spool(spool_dir: Path | str | None = None, tracking_uri: str | None = None, retry_for: float = 60.0) -> int:
    """Sends every spooled segment to MLflow in order and removes each once delivered.

    The tracking URI is ``tracking_uri`` if given, else ``MLFLOW_TRACKING_URI``, else the one
    recorded in the segment (where the points were meant to go). Segments of a still running
    process are left alone. Prints a summary; returns 0 when nothing is left to send, 1 otherwise (MLflow
    unavailable for ``retry_for`` seconds, a segment unreadable or refused as a whole).
    """
    directory = Path(spool_dir).expanduser() if spool_dir else default_spool_dir()
    if spool_dir and not directory.is_dir():
        print(f"tracelet upload: no spool directory {directory}")
        return 1
    found = segments(directory)
    if not found:
        print(f"tracelet upload: nothing to upload in {directory}")
        return 0
    busy = {p.name.rsplit("-", 1)[0] for p in found if _in_use(directory, p.name.rsplit("-", 1)[0])}
    todo = [p for p in found if p.name.rsplit("-", 1)[0] not in busy]
    writers: dict[str, MlflowWriter] = {}
    sent_points = sent_segments = 0
    problems: list[str] = []
    progress = _progress()
    task = progress.add_task("uploading", total=len(todo)) if progress else None
    if progress:
        progress.start()
    try:
        for path, header, entries, error in _entries(todo):
            if progress:
                progress.advance(task)
            if header is None:
                problems.append(f"{path.name}: unreadable ({error}); kept")
                continue
            uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or header.get("tracking_uri")
            uri = uri or default_tracking_uri()
            try:
                writer = writers.get(uri) or writers.setdefault(uri, MlflowWriter(uri))
            except (ValueError, RuntimeError) as exc:
                problems.append(f"{path.name}: {exc}; kept")
                continue
            try:
                for entry in entries:
                    _deliver(writer, entry, header.get("experiment_id"), retry_for)
            except MlflowUnavailable as exc:
                problems.append(f"MLflow at {public_uri(uri)} is unavailable ({exc}); {path.name} and later kept")
                break
            except MlflowRejected as exc:
                problems.append(f"{path.name}: MLflow refused it ({exc}); kept")
                continue
            sent_points += points(entries)
            sent_segments += 1
            path.unlink()
    finally:
        if progress:
            progress.stop()
        for writer in writers.values():
            writer.close()
    left = len(segments(directory))
    print(
        f"tracelet upload: sent {sent_points} points from {sent_segments} segment(s) in {directory}; "
        f"{left} segment(s) left" + (f" ({len(busy)} process(es) still running)" if busy else "")
    )
    for problem in problems:
        print(f"tracelet upload: {problem}")
    return 0 if left == 0 else 1
