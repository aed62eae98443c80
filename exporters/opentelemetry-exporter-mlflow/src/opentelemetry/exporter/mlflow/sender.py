"""Delivery of mapped rows into MLflow: a queue, one sender thread, the spool, the runs' terminal status.

:class:`Sender` takes :class:`~opentelemetry.exporter.mlflow.mapping.RunBatch` es and delivers
them with :class:`~opentelemetry.exporter.mlflow.delivery.MlflowWriter`, in order, retrying while
MLflow is unavailable. Above ``max_queue_points`` queued points the oldest go to the durable spool
on disk, which the sender reads back first when MLflow answers again. Shutdown waits at most its
timeout (not at all while MLflow is known to be unavailable), spools what is left and says how to
send it (``tracelet upload``), then sets the runs' terminal status.

It is the MLflow exporter's delivery, wherever the exporter runs (in the helper process of
:mod:`~opentelemetry.instrumentation.tensorboard.export_process`, or in process).
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from pathlib import Path

from opentelemetry.exporter.mlflow.delivery import (
    MlflowCredentialsRefused,
    MlflowRejected,
    MlflowUnavailable,
    MlflowWriter,
    public_uri,
    take,
)
from opentelemetry.exporter.mlflow.mapping import INSTANCE_ID, RunBatch, RunKey
from opentelemetry.exporter.mlflow.spool import Entry, Journal, Spool, Status, points, read, upload_spool

_logger = logging.getLogger(__name__)

_BACKOFF_FIRST, _BACKOFF_CAP = 0.25, 5.0


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
    ) -> None:
        self.tracking_uri = tracking_uri
        self.experiment_id = experiment_id
        self.run_id = run_id
        self.spool_dir = spool_dir
        self.max_queue_points = max_queue_points
        self.request_timeout = request_timeout
        self._spool = Spool(self.spool_dir, self.tracking_uri, self.experiment_id)
        self._journal = Journal(self._spool)
        self._instance = instance
        self._source_tags = dict(source_tags or {})

        self._cond = threading.Condition()
        self._memory: deque[RunBatch] = deque()  # newest rows; older ones are in the spool segments
        self._queued = 0  # metric points in _memory
        self._segments: deque[Path] = deque()  # this process's spilled segments, oldest first
        self._loaded: list[Entry] | None = None  # the segment being sent
        self._loaded_path: Path | None = None
        self._loaded_index = 0
        self._inflight: Entry | None = None
        self._inflight_from_memory = False
        self._keys: dict[RunKey, RunKey] = {}
        self._owned: dict[RunKey, None] = {}  # runs this sender writes to and ends
        self._writer: MlflowWriter | None = None
        self._thread: threading.Thread | None = None
        self._recovery: threading.Thread | None = None  # sends what dead processes left (see _recover)
        self._closed = False
        self._stopping = False
        self._failures = 0
        self._refused = ""  # MLflow refused the credentials: nothing is sent any more, all is spooled
        self._wake = threading.Event()
        self._last_error = ""
        self._reported: set[str] = set()
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
            if self._queued > self.max_queue_points or (self._refused and self._memory):
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
        if self.unavailable:
            return False
        return self._wait_idle(time.monotonic() + timeout)

    def shutdown(self, status: str, timeout: float) -> None:
        """Delivers for at most ``timeout`` seconds, spools the rest, ends the runs with ``status``."""
        if self._closed:
            return
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
        if self._refused:  # the refusal's own message says where the points are
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
        return bool(self._inflight is not None or self._loaded is not None or self._segments or self._memory)

    def _wait_idle(self, deadline: float, failures: int | None = None) -> bool:
        """Waits until nothing is pending; ``False`` at ``deadline``, or after ``failures`` failed attempts in a row."""
        with self._cond:
            while self._pending_locked():
                if self._thread is None or not self._thread.is_alive():
                    return False
                if failures is not None and self._failures >= failures:
                    return False
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(min(remaining, 0.5))
            return True

    # The sender thread --------------------------------------------------------------------------

    def _next_locked(self) -> Entry | None:
        while not self._stopping:
            if self._refused:  # nothing can be sent until the credentials are fixed; shutdown spools
                self._cond.notify_all()
                self._cond.wait()
                continue
            if self._inflight is not None:
                return self._inflight
            if self._loaded is not None:
                if self._loaded_index < len(self._loaded):
                    self._inflight, self._inflight_from_memory = self._loaded[self._loaded_index], False
                    return self._inflight
                if self._loaded_path is not None:
                    self._loaded_path.unlink(missing_ok=True)
                self._loaded, self._loaded_path = None, None
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
                self._loaded, self._loaded_path, self._loaded_index = entries, path, 0
                continue
            if self._memory:
                chunk = take(self._memory)
                self._queued -= len(chunk.metrics)
                self._inflight, self._inflight_from_memory = chunk, True
                return chunk
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
            except MlflowCredentialsRefused as exc:
                self._refuse(str(exc))
                continue
            except MlflowUnavailable as exc:
                self._failures += 1
                self._unavailable(str(exc), self._failures)
                continue
            except MlflowRejected as exc:
                self._park(entry, exc)
            except Exception as exc:  # noqa: BLE001 - the sender must outlive any surprise
                self._failures += 1
                self._unavailable(f"{type(exc).__name__}: {exc}", self._failures)
                continue
            if self._failures:
                self._failures = 0
                _logger.info("MLflow at %s takes points again", public_uri(self.tracking_uri))
                self._reported.discard("outage")
            with self._cond:
                if self._inflight is entry:
                    self._inflight = None
                    if not self._inflight_from_memory:
                        self._loaded_index += 1
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
        if self._closed:  # shutting down: retry promptly until the deadline
            delay = 0.5
        else:
            delay = min(_BACKOFF_CAP, _BACKOFF_FIRST * 2 ** min(failures - 1, 10)) * random.uniform(0.5, 1.0)
        self._wake.wait(delay)
        self._wake.clear()

    def _refuse(self, error: str) -> None:
        """Credentials refused: keep everything on disk at once and stop sending (no retry can succeed)."""
        with self._cond:
            self._failures += 1
            self._refused = self._last_error = error
            if self._inflight is not None and self._inflight_from_memory:
                self._memory.appendleft(self._inflight)  # type: ignore[arg-type]
                self._queued += len(self._inflight.metrics)  # type: ignore[union-attr]
                self._inflight = None
            if self._memory:
                self._spill_locked()
            self._cond.notify_all()
        _logger.error(
            "MLflow at %s refused the credentials (%s). Nothing more is sent from this process; every point is kept "
            "in %s. Once the credentials are right, send them with: tracelet upload --spool-dir %s",
            public_uri(self.tracking_uri),
            error,
            self.spool_dir,
            self.spool_dir,
        )

    def _park(self, entry: Entry, exc: MlflowRejected) -> None:
        """A batch MLflow refuses as a whole: kept on disk for ``tracelet upload`` once the cause is fixed."""
        try:
            path = self._spool.write([entry])
        except OSError as error:
            path = None
            self._report("park-failed", "MLflow exporter: cannot write the spool in %s (%s)", self.spool_dir, error)
        self._report(
            f"refused:{exc.message}",
            "MLflow at %s refused points of run %s as a whole: %s. They are kept in %s; once the cause is "
            "fixed, send them with: tracelet upload --spool-dir %s",
            public_uri(self.tracking_uri),
            entry.run.run_name or entry.run.instance_id,
            exc.message,
            path or "memory (lost at exit)",
            self.spool_dir,
        )

    # Shutdown -----------------------------------------------------------------------------------

    def _shutdown(self, status: str, timeout: float) -> None:
        began = time.monotonic()
        deadline = began + timeout
        self._closed = True
        self._wake.set()
        # While MLflow is known to be down, waiting only delays the spool: save at once.
        # Two failed attempts in a row during shutdown (about a second) count as down too.
        drained: bool | None = None if self.unavailable else self._wait_idle(deadline, failures=2)
        end_ms = int(time.time() * 1000)
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
            oldest = [self._inflight] if self._inflight is not None and self._inflight_from_memory else []
            left: list[Entry] = []
            while self._memory:
                left.append(take(self._memory))
            on_disk = ([self._loaded_path] if self._loaded_path else []) + list(self._segments)
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
                "later with: tracelet upload --spool-dir %s",
                public_uri(self.tracking_uri),
                waiting,
                f" of run {', '.join(runs)}" if runs else "",
                self._last_error or "still sending",
                f"waited {time.monotonic() - began:.1f} s" if drained is not None else "did not wait",
                self.spool_dir,
                self.spool_dir,
            )
        elif saved is not None:
            _logger.warning(
                "MLflow at %s took every point but not the final status %s of the run; it is saved in %s; set "
                "it later with: tracelet upload --spool-dir %s",
                public_uri(self.tracking_uri),
                status,
                self.spool_dir,
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

    # Misc ---------------------------------------------------------------------------------------

    def _report(self, what: str, message: str, *args: object) -> None:
        if what not in self._reported:
            self._reported.add(what)
            _logger.warning(message, *args)


def _count(path: Path) -> int:
    try:
        return points(read(path)[1])
    except (OSError, ValueError, KeyError, TypeError):
        return 0
