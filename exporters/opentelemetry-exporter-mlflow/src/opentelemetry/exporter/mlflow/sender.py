"""Delivery of mapped rows into MLflow: a queue, one sender thread, the spool, the runs' terminal status.

:class:`Sender` takes :class:`~opentelemetry.exporter.mlflow.mapping.RunBatch` es and delivers
them with :class:`~opentelemetry.exporter.mlflow.delivery.MlflowWriter`, in order, retrying while
MLflow is unavailable. Above ``max_queue_points`` queued points the oldest go to the durable spool
on disk, which the sender reads back first when MLflow answers again. Shutdown waits at most its
timeout (not at all while MLflow is known to be unavailable), spools what is left and says how to
send it (``opentelemetry-exporter-mlflow upload``), then sets the runs' terminal status. Failures
are told apart by :func:`~opentelemetry.exporter.mlflow.errors.classify` and retried after the delays
of :data:`~opentelemetry.exporter.mlflow.retry.RETRY`.

Requests that are not full go at most every ``schedule_delay`` seconds (all that is queued then,
in as many requests as it takes): exports can come every half second, to keep what a SIGKILL loses
small, without multiplying MLflow's requests. A full request goes at once; a flush or shutdown
sends everything.

What the sender does next is one :class:`State`; what it is sending is one entry (``_inflight``),
taken from the spool segment being read (``_reading``) or, when none is, from memory.

It is the MLflow exporter's delivery, wherever the exporter runs (in the helper process of
:mod:`~opentelemetry.instrumentation.tensorboard.export_process`, or in process).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from enum import Enum
from pathlib import Path

from opentelemetry.exporter.mlflow.batching import MAX_METRICS, take
from opentelemetry.exporter.mlflow.errors import Failure, MlflowRejected, MlflowUnavailable, classify
from opentelemetry.exporter.mlflow.mapping import INSTANCE_ID, RunBatch, RunKey
from opentelemetry.exporter.mlflow.reporting import ReportOnce
from opentelemetry.exporter.mlflow.retry import RETRY
from opentelemetry.exporter.mlflow.spool import (
    UPLOAD_COMMAND,
    Entry,
    Journal,
    Spool,
    Status,
    points,
    read,
    upload_spool,
)
from opentelemetry.exporter.mlflow.tracking_uri import public_uri
from opentelemetry.exporter.mlflow.writer import MlflowWriter

_logger = logging.getLogger(__name__)


class State(Enum):
    """What the sender does with rows."""

    OPEN = "open"  # delivers them as they come
    REFUSED = "refused"  # MLflow refused the credentials: every row goes to the spool, none is sent
    CLOSING = "closing"  # shut down: delivers until the shutdown's deadline
    STOPPED = "stopped"  # shutdown took what is left to the spool; the sender thread ends


@dataclass
class _Segment:
    """A spool segment being sent: its rows, and how many of them MLflow has taken."""

    path: Path
    entries: list[Entry]
    sent: int = 0


class Sender:
    """Delivers rows into MLflow, each exactly once, and ends the runs it created.

    Args:
        tracking_uri: MLflow tracking URI (already checked).
        spool_dir: where undeliverable rows wait on disk.
        experiment_id: experiment (by id) when a row's run names none.
        run_id: existing run to write into when a row's run names none.
        instance: ``service.instance.id`` for rows whose resource has none.
        source_tags: tags of every run created (``mlflow.source.name``, ``mlflow.user``, ...).
        max_queue_points: points kept in memory before the oldest go to the spool.
        request_timeout: seconds one MLflow request may take before it is retried.
        schedule_delay: seconds between two sends of requests that are not full (0: at once).
        progress: called with the number of points delivered so far after each request.
    """

    def __init__(
        self,
        tracking_uri: str,
        spool_dir: Path,
        experiment_id: str | None = None,
        run_id: str | None = None,
        instance: str = "",
        source_tags: Mapping[str, str] | None = None,
        max_queue_points: int = 200_000,
        request_timeout: float = 10.0,
        progress: Callable[[int], object] | None = None,
        schedule_delay: float = 0.0,
    ) -> None:
        self.tracking_uri = tracking_uri
        self.experiment_id = experiment_id
        self.run_id = run_id
        self.spool_dir = spool_dir
        self.max_queue_points = max_queue_points
        self.request_timeout = request_timeout
        self.schedule_delay = schedule_delay
        self._spool = Spool(self.spool_dir, self.tracking_uri, self.experiment_id)
        self._journal = Journal(self._spool)
        self._instance = instance
        self._source_tags = dict(source_tags or {})

        self._cond = threading.Condition()
        self._state = State.OPEN
        self._memory: deque[RunBatch] = deque()  # newest rows; older ones are in the spool segments
        self._queued = 0  # metric points in _memory
        self._draining = False  # sending all of _memory, however little (schedule_delay has passed, or a flush)
        self._next_drain = 0.0  # monotonic time from which rows in memory that fill no request go
        self._flushers = 0  # flush() calls waiting: rows that come meanwhile go at once too
        self._segments: deque[Path] = deque()  # this process's spilled segments not read yet, oldest first
        self._reading: _Segment | None = None  # the segment being sent; while there is none, rows come from memory
        self._inflight: Entry | None = None  # the entry being sent, until MLflow took it
        self._keys: dict[RunKey, RunKey] = {}
        self._owned: dict[RunKey, None] = {}  # runs this sender writes to and ends
        self._writer: MlflowWriter | None = None
        self._thread: threading.Thread | None = None
        self._recovery: threading.Thread | None = None  # sends what dead processes left (see _recover)
        self._failures = 0  # failed attempts in a row
        self._wake = threading.Event()
        self._last_error = ""
        self._report = ReportOnce(_logger)
        self.delivered_points = 0
        self._progress = progress

    def submit(self, batches: Iterable[RunBatch]) -> None:
        """Queues rows, after appending them to the journal; never waits for MLflow."""
        with self._cond:
            added = []
            for batch in batches:
                batch.run = self._own_key(batch.run)
                if batch.run.run_id is None:
                    self._owned[batch.run] = None
                added.append(batch)
                self._queued += len(batch.metrics)
            self._journal.append(added)
            self._memory.extend(added)
            if self._queued > self.max_queue_points or (self._state is State.REFUSED and self._memory):
                self._spill_locked()
            if self._thread is None:
                self._thread = threading.Thread(target=self._send_loop, name="MlflowSender", daemon=True)
                self._thread.start()
                self._recovery = threading.Thread(target=self._recover, name="MlflowSpoolRecovery", daemon=True)
                self._recovery.start()
            self._cond.notify_all()

    def flush(self, timeout: float) -> bool:
        """Waits until everything queued so far is in MLflow; ``False`` if not within ``timeout`` seconds.

        Returns ``False`` at once while MLflow is known to be unavailable: waiting would only delay
        the shutdown that usually follows, which spools what is left.
        """
        self._wake.set()
        with self._cond:
            self._flushers += 1
            self._draining = True
            self._cond.notify_all()
        try:
            if self.unavailable:
                return False
            return self._wait_idle(time.monotonic() + timeout)
        finally:
            with self._cond:
                self._flushers -= 1

    def shutdown(self, status: str, timeout: float) -> None:
        """Delivers for at most ``timeout`` seconds, spools the rest, ends the runs with ``status``."""
        with self._cond:
            if self._state in (State.CLOSING, State.STOPPED):
                return
            # Refused credentials: nothing can be delivered, so nothing is waited for.
            self._state = State.CLOSING if self._state is State.OPEN else State.STOPPED
            self._cond.notify_all()
        self._shutdown(status, max(timeout, 0.0))

    @property
    def started(self) -> bool:
        """Whether anything was ever submitted."""
        return self._thread is not None

    @property
    def unavailable(self) -> bool:
        """Whether the last attempt to reach MLflow failed (an outage is going on)."""
        return self._failures > 0

    # Queueing -----------------------------------------------------------------------------------

    def _own_key(self, run: RunKey) -> RunKey:
        own = self._keys.get(run)
        if own is None:
            instance = run.instance_id or self._instance
            tags = dict(run.tags)
            tags[INSTANCE_ID] = instance
            for key, value in self._source_tags.items():
                tags.setdefault(key, value)
            own = self._keys[run] = replace(
                run, instance_id=instance, run_id=run.run_id or self.run_id, tags=tuple(sorted(tags.items()))
            )
        return own

    def _spill_locked(self) -> None:
        """Moves every row in memory (the newest) to a new spool segment, after the older ones."""
        entries: list[Entry] = []
        while self._memory:
            entries.append(take(self._memory))
        try:
            path = self._spool.write(entries)
        except OSError as exc:
            self._memory.extend(e for e in entries if isinstance(e, RunBatch))
            self._report(
                "spill-failed",
                "MLflow exporter: cannot write the spool in %s (%s); points stay in memory",
                self.spool_dir,
                exc,
            )
            return
        self._segments.append(path)
        spilled, self._queued = self._queued, 0
        if self._state is State.REFUSED:  # the refusal's own message says where the points are
            return
        self._report(
            "spill",
            "MLflow at %s is not taking points as fast as they come; more than %d wait, so they are "
            "kept on disk in %s and sent from there in order",
            public_uri(self.tracking_uri),
            self.max_queue_points,
            self.spool_dir,
        )
        _logger.debug("spilled %d points to %s", spilled, path)

    def _pending_locked(self) -> bool:
        return bool(self._inflight is not None or self._reading is not None or self._segments or self._memory)

    def _wait_idle(self, deadline: float, failures: int | None = None) -> bool:
        """Waits until nothing is pending; ``False`` at ``deadline``, or after ``failures`` failed attempts in a row."""
        with self._cond:
            while self._pending_locked():
                if self._thread is None or not self._thread.is_alive():
                    return False
                if failures is not None and self._failures >= failures:
                    return False
                if self._state is State.REFUSED:
                    return False
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(min(remaining, 0.5))
            return True

    # The sender thread --------------------------------------------------------------------------

    def _next_locked(self) -> Entry | None:
        while self._state is not State.STOPPED:
            if self._state is State.REFUSED:  # nothing can be sent until the credentials are fixed; shutdown spools
                self._cond.notify_all()
                self._cond.wait()
                continue
            if self._inflight is not None:
                return self._inflight
            reading = self._reading
            if reading is not None:
                if reading.sent < len(reading.entries):
                    self._inflight = reading.entries[reading.sent]
                    return self._inflight
                reading.path.unlink(missing_ok=True)
                self._reading = None
                continue
            if self._segments:
                path = self._segments.popleft()
                try:
                    _header, entries = read(path)
                except (OSError, ValueError, KeyError, TypeError) as exc:
                    self._report(
                        f"read:{path}", "MLflow exporter: cannot read spool segment %s (%s); left for upload", path, exc
                    )
                    continue
                self._reading = _Segment(path, entries)
                continue
            if self._memory:
                if not self._draining and self._state is State.OPEN and self._queued < MAX_METRICS:
                    remaining = self._next_drain - time.monotonic()
                    if remaining > 0:  # too little for a request: more may come before the schedule says go
                        self._cond.wait(remaining)
                        continue
                self._draining = True
                chunk = take(self._memory)
                self._queued -= len(chunk.metrics)
                self._inflight = chunk
                return chunk
            if self._draining and not self._flushers:
                self._draining = False
                self._next_drain = time.monotonic() + self.schedule_delay
            self._journal.settle(self._owned)  # idle: everything journaled is in MLflow
            self._cond.notify_all()  # wake flushers
            self._cond.wait()
        return None

    def _send_loop(self) -> None:
        while True:
            with self._cond:
                entry = self._next_locked()
            if entry is None:
                return
            try:
                self._deliver(entry)
            except Exception as exc:  # noqa: BLE001 - the sender must outlive any surprise
                failure = classify(exc)
                if failure is Failure.CREDENTIALS:
                    self._refuse(str(exc))
                    continue
                if failure is Failure.TRANSIENT:
                    self._failures += 1
                    self._unavailable(str(exc), self._failures)
                    continue
                # Refused content, or an error of no known kind: retrying cannot help; keep it for upload.
                self._park(entry, exc)
            if self._failures:
                self._failures = 0
                _logger.info("MLflow at %s takes points again", public_uri(self.tracking_uri))
                self._report.again("outage")
            with self._cond:
                if self._inflight is entry:
                    self._inflight = None
                    if self._reading is not None:
                        self._reading.sent += 1
                self._cond.notify_all()

    def _recover(self) -> None:
        """Sends what processes that died on this machine left for this tracking URI (journals, segments)."""
        uri = self.tracking_uri
        try:
            upload_spool(self.spool_dir, uri, retry_for=30.0, say=_logger.info, only_uri=uri)
        except Exception as exc:  # noqa: BLE001 - recovery must never disturb this process's own delivery
            _logger.warning(
                "MLflow exporter: could not send what earlier processes left in %s (%s: %s)",
                self.spool_dir,
                type(exc).__name__,
                exc,
            )

    def _deliver(self, entry: Entry) -> None:
        writer = self._writer
        if writer is None:
            try:
                writer = self._writer = MlflowWriter(self.tracking_uri, self.request_timeout, self.experiment_id)
            except (ValueError, RuntimeError, ImportError) as exc:
                raise MlflowUnavailable(str(exc)) from None
        if isinstance(entry, Status):
            writer.finish(entry.run, entry.status, entry.end_ms)
        else:
            writer.write(entry)
            self.delivered_points += len(entry.metrics)
            if self._progress is not None:
                self._progress(self.delivered_points)

    def _unavailable(self, error: str, failures: int) -> None:
        self._last_error = error
        self._report(
            "outage",
            "MLflow at %s is unavailable (%s); points are kept (on disk in %s beyond %d) and sent when it answers",
            public_uri(self.tracking_uri),
            error,
            self.spool_dir,
            self.max_queue_points,
        )
        self._wake.wait(RETRY.delay(failures))
        self._wake.clear()

    def _refuse(self, error: str) -> None:
        """Credentials refused: keep everything on disk at once and stop sending (no retry can succeed)."""
        with self._cond:
            self._failures += 1
            self._last_error = error
            closing = self._state is not State.OPEN
            self._state = State.REFUSED
            if self._inflight is not None and self._reading is None:
                self._memory.appendleft(self._inflight)  # type: ignore[arg-type]
                self._queued += len(self._inflight.metrics)  # type: ignore[union-attr]
                self._inflight = None
            if self._memory:
                self._spill_locked()
            if closing:  # a shutdown is waiting: nothing more can be delivered, it spools the rest now
                self._state = State.STOPPED
            self._cond.notify_all()
        _logger.error(
            "MLflow at %s refused the credentials (%s). Nothing more is sent from this process; every point is kept "
            "in %s. Once the credentials are right, send them with: %s --spool-dir %s",
            public_uri(self.tracking_uri),
            error,
            self.spool_dir,
            UPLOAD_COMMAND,
            self.spool_dir,
        )

    def _park(self, entry: Entry, exc: Exception) -> None:
        """A batch MLflow refuses as a whole, or that failed unexpectedly: kept on disk to upload once fixed."""
        try:
            path = self._spool.write([entry])
        except OSError as error:
            path = None
            self._report("park-failed", "MLflow exporter: cannot write the spool in %s (%s)", self.spool_dir, error)
        if isinstance(exc, MlflowRejected):
            what, reason, trace = "refused points", exc.message, None
        else:
            what, reason, trace = "failed on points", f"{type(exc).__name__}: {exc}", exc
        self._report(
            f"refused:{reason}",
            "MLflow at %s %s of run %s as a whole: %s. They are kept in %s; once the cause is "
            "fixed, send them with: %s --spool-dir %s",
            public_uri(self.tracking_uri),
            what,
            entry.run.run_name or entry.run.instance_id,
            reason,
            path or "memory (lost at exit)",
            UPLOAD_COMMAND,
            self.spool_dir,
            exc_info=trace,
        )

    # Shutdown -----------------------------------------------------------------------------------

    def _shutdown(self, status: str, timeout: float) -> None:
        began = time.monotonic()
        deadline = began + timeout
        self._wake.set()
        # While MLflow is known to be down, waiting only delays the spool: save at once.
        # Two failed attempts in a row during shutdown (about a second) count as down too.
        drained: bool | None = None if self.unavailable else self._wait_idle(deadline, failures=2)
        end_ms = int(time.time() * 1000)
        with self._cond:
            self._state = State.STOPPED
            self._cond.notify_all()
            oldest = [self._inflight] if self._inflight is not None and self._reading is None else []
            left: list[Entry] = []
            while self._memory:
                left.append(take(self._memory))
            on_disk = ([self._reading.path] if self._reading else []) + list(self._segments)
        self._wake.set()
        if oldest and on_disk:  # the request in flight is older than what was spilled meanwhile
            try:
                self._spool.prepend(on_disk[0], oldest)
            except (OSError, ValueError) as exc:
                _logger.warning("MLflow exporter: cannot update spool segment %s (%s)", on_disk[0], exc)
                left = oldest + left
        else:
            left = oldest + left
        statuses = [Status(run, status, end_ms) for run in self._owned]
        if drained and not left and not on_disk and statuses:  # None (did not wait) counts as not drained
            statuses = self._finish(statuses)
        saved = None
        unsaved = False
        if left or statuses:
            try:
                saved = self._spool.write(left + statuses)
            except OSError as exc:
                unsaved = True
                kept = "" if self._journal.broken else f"; they stay in the journal in {self.spool_dir}"
                _logger.error(
                    "MLflow exporter: %d points could not be delivered nor saved in a spool segment in %s (%s)%s",
                    points(left),
                    self.spool_dir,
                    exc,
                    kept or "; they are lost",
                )
        if not unsaved:
            with self._cond:
                self._journal.discard()  # everything in it is in MLflow or in a segment
        if (left and not unsaved) or on_disk:  # unsaved points had their own message above
            waiting = (0 if unsaved else points(left)) + sum(_count(path) for path in on_disk)
            runs = sorted(
                {e.run.run_name or e.run.instance_id for e in left}
                | {s.run.run_name or s.run.instance_id for s in statuses}
            )
            _logger.warning(
                "MLflow at %s did not take %d points%s (%s; shutdown %s). They are saved in %s; send them "
                "later with: %s --spool-dir %s",
                public_uri(self.tracking_uri),
                waiting,
                f" of run {', '.join(runs)}" if runs else "",
                self._last_error or "still sending",
                f"waited {time.monotonic() - began:.1f} s" if drained is not None else "did not wait",
                self.spool_dir,
                UPLOAD_COMMAND,
                self.spool_dir,
            )
        elif saved is not None:
            _logger.warning(
                "MLflow at %s took every point but not the final status %s of the run; it is saved in %s; set "
                "it later with: %s --spool-dir %s",
                public_uri(self.tracking_uri),
                status,
                self.spool_dir,
                UPLOAD_COMMAND,
                self.spool_dir,
            )
        if self._recovery is not None and not self.unavailable:  # what a killed job left goes out first
            self._recovery.join(timeout=max(0.0, deadline - time.monotonic()))
        self._spool.release()
        if self._thread is not None:
            self._thread.join(timeout=max(0.0, min(1.0, deadline - time.monotonic())))
        if self._writer is not None and (self._thread is None or not self._thread.is_alive()):
            self._writer.close()

    def _finish(self, statuses: list[Status]) -> list[Status]:
        """Sets terminal statuses now; returns those MLflow could not take."""
        writer = self._writer
        if writer is None:
            return []  # nothing was ever written, so no run exists
        left = []
        for status in statuses:
            try:
                writer.finish(status.run, status.status, status.end_ms)
            except MlflowUnavailable:
                left.append(status)
            except MlflowRejected as exc:
                self._report(
                    "finish", "MLflow refused to end run %s as %s: %s", status.run.run_name, status.status, exc.message
                )
        return left


def _count(path: Path) -> int:
    try:
        return points(read(path)[1])
    except (OSError, ValueError, KeyError, TypeError):
        return 0
