"""The OpenTelemetry ``MetricExporter`` that writes every captured point into MLflow runs.

``export()`` maps the collection (:class:`~opentelemetry.exporter.mlflow.mapping.Mapper`) and
queues the rows; one sender thread delivers them with :class:`~opentelemetry.exporter.mlflow.
delivery.MlflowWriter`, in order, retrying while MLflow is unavailable. Above
``max_queue_points`` queued points the oldest go to the durable spool on disk, which the sender
reads back first when MLflow answers again. Shutdown waits at most ``export_timeout`` seconds,
spools what is left and says how to send it (``tracelet upload``), then sets the runs' terminal
status (see :mod:`~opentelemetry.exporter.mlflow.lifecycle`).
"""

from __future__ import annotations

import atexit
import getpass
import importlib.util
import logging
import os
import random
import sys
import threading
import time
import uuid
import weakref
from collections import deque
from contextlib import suppress
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from opentelemetry.sdk.metrics import (
    Counter,
    Histogram,
    ObservableCounter,
    ObservableGauge,
    ObservableUpDownCounter,
    UpDownCounter,
    _Gauge,
)
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    MetricExporter,
    MetricExportResult,
    MetricsData,
)

from opentelemetry.exporter.mlflow import lifecycle
from opentelemetry.exporter.mlflow.delivery import (
    MlflowRejected,
    MlflowUnavailable,
    MlflowWriter,
    check_tracking_uri,
    default_tracking_uri,
    public_uri,
    take,
)
from opentelemetry.exporter.mlflow.mapping import INSTANCE_ID, SCALAR, Mapper, RunBatch, RunKey
from opentelemetry.exporter.mlflow.spool import Entry, Spool, Status, default_spool_dir, points, read

_logger = logging.getLogger(__name__)

_DELTA = {
    kind: AggregationTemporality.DELTA
    for kind in (
        Counter,
        UpDownCounter,
        Histogram,
        ObservableCounter,
        ObservableUpDownCounter,
        ObservableGauge,
        _Gauge,
    )
}
_BACKOFF_FIRST, _BACKOFF_CAP = 0.25, 5.0


def _source_tags() -> dict[str, str]:
    """The tags MLflow's own client puts on a run it creates."""
    tags = {"mlflow.source.type": "LOCAL"}
    if sys.argv and sys.argv[0] not in ("", "-c", "-m"):
        tags["mlflow.source.name"] = os.path.abspath(sys.argv[0])
    with suppress(KeyError, OSError):
        tags["mlflow.user"] = getpass.getuser()
    return tags


class MlflowMetricExporter(MetricExporter):
    """Writes TensorBoard points captured by OpenTelemetry into MLflow runs, each exactly once.

    Args:
        tracking_uri: MLflow tracking URI; default ``MLFLOW_TRACKING_URI``, else
            ``sqlite:///mlflow.db`` in the working directory (MLflow 3's default).
        experiment_name: experiment for points whose resource names none; default
            ``MLFLOW_EXPERIMENT_NAME``.
        run_id: existing run to write into; default ``MLFLOW_RUN_ID``.
        spool_dir: where undeliverable points wait on disk; default ``TRACELET_SPOOL_DIR``, else
            ``~/.cache/tracelet/spool``.
        max_queue_points: points kept in memory before the oldest go to the spool.
        export_timeout: seconds shutdown waits for delivery before spooling the rest.
        request_timeout: seconds one MLflow request may take before it is retried.
        experiment_id: experiment (by id) when neither the resource nor ``experiment_name`` names
            one; default ``MLFLOW_EXPERIMENT_ID``, else MLflow's default experiment.
        handle_process_exit: chain ``sys.excepthook`` (FAILED) and handle SIGTERM (KILLED).
    """

    def __init__(
        self,
        tracking_uri: str | None = None,
        experiment_name: str | None = None,
        run_id: str | None = None,
        spool_dir: str | os.PathLike[str] | None = None,
        max_queue_points: int = 200_000,
        export_timeout: float = 30.0,
        request_timeout: float = 10.0,
        experiment_id: str | None = None,
        handle_process_exit: bool = True,
        preferred_aggregation: dict | None = None,
    ) -> None:
        super().__init__(preferred_temporality=dict(_DELTA), preferred_aggregation=preferred_aggregation)
        if isinstance(max_queue_points, bool) or not isinstance(max_queue_points, int) or max_queue_points < 1:
            raise ValueError(f"max_queue_points must be a positive integer, got {max_queue_points!r}")
        for name, value in (("export_timeout", export_timeout), ("request_timeout", request_timeout)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")
        self.tracking_uri = check_tracking_uri(tracking_uri or default_tracking_uri())
        if urlsplit(self.tracking_uri).scheme not in ("http", "https") and not (
            importlib.util.find_spec("sqlalchemy") and importlib.util.find_spec("mlflow")
        ):
            raise ValueError(
                f"tracking_uri {self.tracking_uri!r} needs the full mlflow package "
                "(pip install 'opentelemetry-exporter-mlflow[embedded]'); or use an http(s):// tracking server"
            )
        self.experiment_id = experiment_id or os.environ.get("MLFLOW_EXPERIMENT_ID") or None
        self.run_id = run_id or os.environ.get("MLFLOW_RUN_ID") or None
        self.spool_dir = Path(spool_dir).expanduser() if spool_dir else default_spool_dir()
        self.max_queue_points = max_queue_points
        self.export_timeout = float(export_timeout)
        self.request_timeout = float(request_timeout)
        self._mapper = Mapper(experiment_name or os.environ.get("MLFLOW_EXPERIMENT_NAME") or None)
        self._spool = Spool(self.spool_dir, self.tracking_uri, self.experiment_id)
        self._pid = os.getpid()
        self._instance = str(uuid.uuid4())
        self._source_tags = _source_tags()

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
        self._owned: dict[RunKey, None] = {}  # runs this process writes to and ends
        self._writer: MlflowWriter | None = None
        self._thread: threading.Thread | None = None
        self._closed = False
        self._stopping = False
        self._wake = threading.Event()
        self._last_error = ""
        self._reported: set[str] = set()
        self.delivered_points = 0

        if handle_process_exit:
            lifecycle.install()
        backstop = weakref.WeakMethod(self._at_exit)
        atexit.register(lambda: (method := backstop()) and method())

    # MetricExporter -----------------------------------------------------------------------------

    def export(self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any) -> MetricExportResult:
        """Maps and queues; never waits for MLflow."""
        if os.getpid() != self._pid:
            self._forked_export(metrics_data)
            return MetricExportResult.SUCCESS
        if self._closed:
            return MetricExportResult.FAILURE
        try:
            batches = self._mapper.from_sdk(metrics_data)
        except Exception as exc:  # noqa: BLE001 - one bad collection must not stop the next ones
            self._report("map", "MLflow exporter: a collection could not be mapped and is skipped (%r)", exc)
            return MetricExportResult.FAILURE
        if not batches:
            return MetricExportResult.SUCCESS
        with self._cond:
            for batch in batches:
                batch.run = self._own_key(batch.run)
                if batch.run.run_id is None:
                    self._owned[batch.run] = None
                self._memory.append(batch)
                self._queued += len(batch.metrics)
            if self._queued > self.max_queue_points:
                self._spill_locked()
            if self._thread is None:
                self._thread = threading.Thread(target=self._send_loop, name="MlflowMetricExporter", daemon=True)
                self._thread.start()
            self._cond.notify_all()
        return MetricExportResult.SUCCESS

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        """Waits until everything queued so far is in MLflow; ``False`` if not within the timeout."""
        if os.getpid() != self._pid:
            return True
        self._wake.set()
        return self._wait_idle(time.monotonic() + timeout_millis / 1000)

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        """Delivers for at most ``export_timeout`` seconds, spools the rest, ends the runs."""
        if os.getpid() != self._pid or self._closed:
            return
        timeout = min(self.export_timeout, float(kwargs.get("timeout", timeout_millis)) / 1000)
        with lifecycle.flushing():
            self._shutdown(max(timeout, 0.0))

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

    def _wait_idle(self, deadline: float) -> bool:
        with self._cond:
            while self._pending_locked():
                if self._thread is None or not self._thread.is_alive():
                    return False
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(min(remaining, 0.5))
            return True

    # The sender thread --------------------------------------------------------------------------

    def _next_locked(self) -> Entry | None:
        while not self._stopping:
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
            self._cond.notify_all()  # idle: wake flushers
            self._cond.wait()
        return None

    def _send_loop(self) -> None:
        failures = 0
        while True:
            with self._cond:
                entry = self._next_locked()
            if entry is None:
                return
            try:
                self._deliver(entry)
            except MlflowUnavailable as exc:
                failures += 1
                self._unavailable(str(exc), failures)
                continue
            except MlflowRejected as exc:
                self._park(entry, exc)
            except Exception as exc:  # noqa: BLE001 - the sender must outlive any surprise
                failures += 1
                self._unavailable(f"{type(exc).__name__}: {exc}", failures)
                continue
            if failures:
                failures = 0
                _logger.info("MLflow at %s takes points again", public_uri(self.tracking_uri))
                self._reported.discard("outage")
            with self._cond:
                if self._inflight is entry:
                    self._inflight = None
                    if not self._inflight_from_memory:
                        self._loaded_index += 1
                self._cond.notify_all()

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

    def _shutdown(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        self._closed = True
        self._wake.set()
        drained = self._wait_idle(deadline)
        status, end_ms = lifecycle.outcome(), int(time.time() * 1000)
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
        if drained and not left and not on_disk and statuses:
            statuses = self._finish(statuses)
        saved = None
        if left or statuses:
            try:
                saved = self._spool.write(left + statuses)
            except OSError as exc:
                _logger.error(
                    "MLflow exporter: %d points could not be delivered nor saved in %s (%s); they are lost",
                    points(left),
                    self.spool_dir,
                    exc,
                )
        if left or on_disk:
            waiting = points(left) + sum(_count(path) for path in on_disk)
            runs = sorted(
                {e.run.run_name or e.run.instance_id for e in left}
                | {s.run.run_name or s.run.instance_id for s in statuses}
            )
            _logger.warning(
                "MLflow at %s did not take %d points%s within %.0f s (%s). They are saved in %s; send them "
                "later with: tracelet upload --spool-dir %s",
                public_uri(self.tracking_uri),
                waiting,
                f" of run {', '.join(runs)}" if runs else "",
                timeout,
                self._last_error or "still sending",
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

    def _at_exit(self) -> None:
        """Backstop for a provider that is never shut down."""
        if os.getpid() == self._pid and not self._closed and self._thread is not None:
            self.shutdown()

    # Misc ---------------------------------------------------------------------------------------

    def _report(self, what: str, message: str, *args: object) -> None:
        if what not in self._reported:
            self._reported.add(what)
            _logger.warning(message, *args)

    def _forked_export(self, metrics_data: MetricsData) -> None:
        """A forked child (e.g. a DataLoader worker): never the parent's runs, points or status."""
        if "forked" in self._reported:
            return
        for resource_metrics in metrics_data.resource_metrics:
            for scope_metrics in resource_metrics.scope_metrics:
                for metric in scope_metrics.metrics:
                    if metric.name == SCALAR and any(p.exemplars for p in getattr(metric.data, "data_points", ())):
                        self._report(
                            "forked",
                            "MLflow exporter: points recorded in forked child process %d are not sent to MLflow "
                            "(the exporter belongs to process %d)",
                            os.getpid(),
                            self._pid,
                        )
                        return


def _count(path: Path) -> int:
    try:
        return points(read(path)[1])
    except (OSError, ValueError, KeyError, TypeError):
        return 0
