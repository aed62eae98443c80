"""A push exporter whose exports survive an outage of their destination and the death of the process.

The SDK's OTLP exporter retries an export for about 10 s and then drops it: a collector restarted,
upgraded or unreachable for longer loses what the training job exported meanwhile, and the
collector's persistent queue only helps from the moment it accepts. :class:`DurableMetricExporter`
wraps any push exporter (``"module:Class"`` and its keyword arguments) so that:

- each export's payload (the ``MetricsData`` as one pickle, as the export process's pipe carries
  it) is appended to this process's :mod:`~opentelemetry.instrumentation.tensorboard.journal`
  first, and ``export`` returns at once: neither the training process nor the export process's
  pipe waits for the network;
- a background thread hands the entries, oldest first, to the real exporter; an entry is
  acknowledged in the journal once that exporter returns SUCCESS (the journal file goes when all
  are), and stays on FAILURE, retried in order after the delays of :data:`RETRY` (the project's
  one :class:`~opentelemetry.instrumentation.tensorboard.retry.RetryPolicy`);
  after every ``probe_every`` failures the next entry is tried once, and if it is accepted the
  oldest is refused for good (a 400, a request too large: the exporter does not say why it
  failed), not delayed by an outage, and is dropped rather than holding back the rest for ever;
- at shutdown it keeps trying for at most ``shutdown_seconds`` (10 s, or less if the
  shutdown's own timeout is shorter), then leaves the rest on disk and says once where, and that
  the next start sends it;
- the first export of a process (the next instrumented process on the machine) first claims the
  journals of processes that are gone (their ``flock`` is free) and were written for the same
  destination, and sends them before its own, exactly once even when two processes start at once.

Replaying an export later is correct for the receivers this project uses: every TensorBoard
point travels as an exemplar with its own step and wall time
(:mod:`~opentelemetry.instrumentation.tensorboard.capture`), an OTLP cumulative data point carries
its own start and time stamps, and ``tracelet receive`` finds a job's run by its
``service.instance.id`` (a late export lands in the run it belongs to). An export sent twice (the
process died after the destination accepted it and before the acknowledgement was written, or a
shutdown gave up on an export still in flight) is stored once: the receiver drops a body it just
delivered, and MLflow's metric table keys a point by (run, key, step, timestamp, value).

The ``tensorboard`` configurator wraps the OTLP exporters this way in the export process (and in
the training process only where no export process can start). With
``OTEL_PYTHON_TENSORBOARD_EXPORT_PROCESS=false`` the exporters stay as the SDK makes them: that
setting asks for nothing beside the training thread, and a journal there would add a pickle per
export and a second busy thread under the training process's GIL. Not wrapped: the MLflow exporter,
which journals and spools its rows itself, and the console exporter, whose output is the
script's stdout. Where journals cannot be kept (no ``flock``, a directory that cannot be written)
the exporter exports directly, as unwrapped, and says so once.
"""

from __future__ import annotations

import logging
import os
import pickle
import re
import threading
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from opentelemetry.sdk.metrics.export import MetricExporter, MetricExportResult, MetricsData

from opentelemetry.instrumentation.tensorboard import _sdk_compat, journal
from opentelemetry.instrumentation.tensorboard.capture import SCALAR
from opentelemetry.instrumentation.tensorboard.environment_variables import (
    OTEL_PYTHON_TENSORBOARD_JOURNAL_DIR,
    read_text,
)
from opentelemetry.instrumentation.tensorboard.export_process import dumps, load, target
from opentelemetry.instrumentation.tensorboard.retry import RetryPolicy

_logger = logging.getLogger(__name__)


RETRY = RetryPolicy(initial_delay=1.0, multiplier=2.0, max_delay=30.0)
"""How often a kept export is tried again: 1 s after the first failure, doubling to 30 s, with jitter."""
SHUTDOWN_SECONDS = 10.0  # how long shutdown keeps trying before it leaves the rest on disk
SHUTDOWN_DELAY = 0.5  # seconds between two tries while shutting down
PROBE_EVERY = 3  # failures of the oldest entry after which the next one is tried once


def default_directory(name: str) -> Path:
    """``$OTEL_PYTHON_TENSORBOARD_JOURNAL_DIR/<name>``, else ``$XDG_CACHE_HOME/opentelemetry-tensorboard/<name>``
    (``~/.cache/opentelemetry-tensorboard/otlp`` for the ``otlp`` exporter)."""
    base = read_text(OTEL_PYTHON_TENSORBOARD_JOURNAL_DIR)
    if base is None:
        cache = os.environ.get("XDG_CACHE_HOME", "").strip() or "~/.cache"
        base = os.path.join(cache, "opentelemetry-tensorboard")
    return Path(base).expanduser() / (re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip(".") or "exporter")


def wrapped(exporter_class: type[MetricExporter]) -> bool:
    """Whether the ``tensorboard`` configurator wraps this exporter: the OTLP ones."""
    return exporter_class.__module__.startswith("opentelemetry.exporter.otlp.")


def in_export_process(
    exporter_class: type[MetricExporter], kwargs: Mapping[str, Any], name: str
) -> tuple[type[MetricExporter], dict[str, Any]]:
    """The exporter class and arguments the export process runs for ``exporter_class(**kwargs)``.

    The OTLP exporters (:func:`wrapped`) run inside :class:`DurableMetricExporter`, journaled under
    ``name`` (``otlp`` for all of them); any other exporter as it is. The ``tensorboard``
    configurator and ``tracelet.start_logging`` both ask here, so both routes keep the same exports.
    """
    if not wrapped(exporter_class):
        return exporter_class, dict(kwargs)
    return DurableMetricExporter, {"exporter": target(exporter_class), "kwargs": dict(kwargs), "name": name}


def points(data: MetricsData) -> int:
    """TensorBoard points (exemplars of ``tensorboard.scalar``) in ``data``: what a kept export holds."""
    count = 0
    for resource_metrics in data.resource_metrics:
        for scope_metrics in resource_metrics.scope_metrics:
            for metric in scope_metrics.metrics:
                if metric.name == SCALAR:
                    count += sum(len(p.exemplars or ()) for p in getattr(metric.data, "data_points", ()))
    return count


@dataclass
class _Entry:
    journal: journal.Journal | None  # None: kept in memory only (no journal could be written)
    seq: int
    offset: int
    length: int
    payload: bytes | None = None


class DurableMetricExporter(MetricExporter):
    """Journals every export on local disk, then exports it with ``exporter`` (see the module docstring).

    Args:
        exporter: the real exporter's class as ``"module:Class"`` (a string, so that the wrapper
            travels to the export process as its arguments).
        kwargs: the real exporter's keyword arguments.
        directory: the journal directory; default :func:`default_directory` of ``name``.
        name: the exporter's name (``OTEL_METRICS_EXPORTER``'s), naming the default directory;
            default the class name.
        policy: retries and the shutdown bound.

    Nothing is written and no thread runs until the first export: the configurator's copy in the
    training process, which only tells the reader the real exporter's preferences, leaves no trace.
    """

    def __init__(
        self,
        exporter: str,
        kwargs: Mapping[str, Any] | None = None,
        directory: str | os.PathLike[str] | None = None,
        name: str | None = None,
        policy: RetryPolicy | None = None,
        shutdown_seconds: float = SHUTDOWN_SECONDS,
        shutdown_delay: float = SHUTDOWN_DELAY,
        probe_every: int = PROBE_EVERY,
    ) -> None:
        self._target = exporter
        self._kwargs = dict(kwargs or {})
        exporter_class = load(exporter)
        self._inner: MetricExporter = exporter_class(**self._kwargs)
        temporality, aggregation = _sdk_compat.exporter_preferences(self._inner)
        super().__init__(preferred_temporality=temporality, preferred_aggregation=aggregation)
        self._name = name or exporter_class.__name__.lower()
        self._directory = Path(directory).expanduser() if directory is not None else None
        self.policy = policy or RETRY
        self.shutdown_seconds = shutdown_seconds
        self.shutdown_delay = shutdown_delay
        self.probe_every = probe_every
        self._cond = threading.Condition()
        self._pending: deque[_Entry] = deque()
        self._journal: journal.Journal | None = None
        self._claimed: list[journal.Journal] = []
        self._counts: dict[int, int] = {}  # entries in the queue per journal (by id)
        self._started = False
        self._direct = False  # no journal: export as unwrapped
        self._closing = False
        self._deadline = 0.0
        self._thread: threading.Thread | None = None
        self._quiet = _QuietWhileRetrying(self)
        self._failures = 0

    @property
    def exporter(self) -> MetricExporter:
        """The real exporter."""
        return self._inner

    @property
    def directory(self) -> Path:
        """Where this exporter's journals are (and where it looks for those of dead processes)."""
        return self._directory or default_directory(self._name)

    def destination(self) -> dict[str, Any]:
        """What a journal's entries were meant for; only journals of the same destination are recovered."""
        kwargs = {key: repr(value) for key, value in sorted(self._kwargs.items())}
        return {"exporter": self._target, "kwargs": kwargs, "endpoint": _sdk_compat.exporter_endpoint(self._inner)}

    # MetricExporter ------------------------------------------------------------------------------

    def export(self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any) -> MetricExportResult:
        with self._cond:
            if self._closing:
                return MetricExportResult.FAILURE
            if not self._started:
                self._start()
            if self._direct:
                direct = True
            else:
                direct = False
                try:
                    payload = dumps(metrics_data)
                except Exception as exc:  # noqa: BLE001 - not picklable: export it as it is, unjournaled
                    _logger.warning("tensorboard: an export could not be journaled (%r); exported directly", exc)
                    direct = True
                else:
                    self._queue(self._append(payload))
                    self._cond.notify_all()
        if direct:
            return self._inner.export(metrics_data, timeout_millis, **kwargs)
        return MetricExportResult.SUCCESS

    def export_payload(self, payload: bytes) -> MetricExportResult:
        """``export`` of a ``MetricsData`` already packed by :func:`~.export_process.dumps` (as the export
        process's pipe carries it): journaled as it came, without unpacking and packing it again."""
        with self._cond:
            if self._closing:
                return MetricExportResult.FAILURE
            if not self._started:
                self._start()
            if not self._direct:
                self._queue(self._append(payload))
                self._cond.notify_all()
                return MetricExportResult.SUCCESS
        return self._inner.export(pickle.loads(payload))  # packed by this process's parent

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        """Waits until every export so far was accepted, at most ``timeout_millis``; whether it was."""
        deadline = time.monotonic() + timeout_millis / 1000
        with self._cond:
            while self._pending and self._thread is not None and self._thread.is_alive():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
            return not self._pending and self._inner.force_flush(max(deadline - time.monotonic(), 0) * 1000)

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        """Sends what it can within the bound (see the module docstring), then keeps the rest on disk."""
        seconds = min(timeout_millis / 1000, self.shutdown_seconds)
        with self._cond:
            if self._closing:
                return
            self._closing = True
            self._deadline = time.monotonic() + seconds
            self._cond.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join(max(self._deadline - time.monotonic(), 0))
        # Ends a retry still in flight (the OTLP exporters' shutdown aborts their back-off wait).
        self._inner.shutdown(timeout_millis=max(self._deadline - time.monotonic(), 0) * 1000 or 1)
        if thread is not None:
            thread.join(5.0)
        with self._cond:
            left = list(self._pending)
            self._pending.clear()
            journals = [j for j in (*self._claimed, self._journal) if j is not None]
            self._claimed, self._journal = [], None
            kept = [entry for entry in left if entry.journal is not None]
            for each in journals:
                each.close()
        if kept:
            where = sorted({str(entry.journal.path) for entry in kept if entry.journal is not None})
            _logger.warning(
                "tensorboard: %d export(s) not accepted by %s within %.0f s are kept in %s; the next "
                "instrumented process on this machine that exports there sends them first",
                len(kept),
                self._describe(),
                seconds,
                ", ".join(where),
            )
        lost = len(left) - len(kept)
        if lost:
            _logger.error("tensorboard: %d export(s) not accepted by %s are lost (no journal)", lost, self._describe())

    # Journal -------------------------------------------------------------------------------------

    def _start(self) -> None:
        """First export: this process's journal, the dead processes' journals claimed, the sending thread."""
        self._started = True
        if not journal.supported():
            self._direct = True
            _logger.warning("tensorboard: no flock on this system; exports are not journaled")
            return
        directory = self.directory
        destination = self.destination()
        try:
            own = journal.Journal.create(directory, destination)
        except OSError as exc:
            self._direct = True
            _logger.warning(
                "tensorboard: cannot keep an export journal in %s (%s); exports the destination does not take in "
                "time are lost",
                directory,
                exc,
            )
            return
        recovered = points_recovered = 0
        for claimed, contents in journal.claim_dead(directory):
            if contents.header.get("destination") != destination or not contents.pending:
                if not contents.pending:
                    claimed.remove()  # everything in it was sent (its process died before removing it)
                claimed.close()
                continue
            self._claimed.append(claimed)
            for seq, offset, length in contents.pending:
                self._queue(_Entry(claimed, seq, offset, length))
                recovered += 1
            points_recovered += _count_points(claimed, contents)
        if recovered:
            _logger.warning(
                "tensorboard: sending first %d export(s) (%d points) that ended processes left in %s",
                recovered,
                points_recovered,
                directory,
            )
        self._journal = own
        self._thread = threading.Thread(target=self._send_loop, name="DurableMetricExporter", daemon=True)
        self._thread.start()

    def _queue(self, entry: _Entry) -> None:
        self._pending.append(entry)
        if entry.journal is not None:
            self._counts[id(entry.journal)] = self._counts.get(id(entry.journal), 0) + 1

    def _append(self, payload: bytes) -> _Entry:
        own = self._journal
        if own is not None:
            try:
                seq, offset, length = own.append(payload)
                return _Entry(own, seq, offset, length)
            except OSError as exc:
                _logger.warning(
                    "tensorboard: cannot write the export journal %s (%s); exports are kept in memory only",
                    own.path,
                    exc,
                )
                self._journal = None
                own.close()
        return _Entry(None, 0, 0, len(payload), payload)

    def _acknowledge(self, entry: _Entry) -> None:
        """Entry accepted: acknowledged, and its file removed once it holds nothing more (under ``_cond``)."""
        owner = entry.journal
        if owner is None:
            return
        try:
            owner.acknowledge(entry.seq)
        except OSError as exc:
            _logger.warning("tensorboard: cannot acknowledge in %s (%s)", owner.path, exc)
        left = self._counts[id(owner)] - 1
        if left:
            self._counts[id(owner)] = left
            return
        del self._counts[id(owner)]
        owner.remove()
        if owner is not self._journal:  # a dead process's journal, all sent
            owner.close()
            self._claimed.remove(owner)

    # Sending ------------------------------------------------------------------------------------

    def _send_loop(self) -> None:
        logger = logging.getLogger(type(self._inner).__module__)
        logger.addFilter(self._quiet)
        try:
            while True:
                with self._cond:
                    while not self._pending and not self._closing:
                        self._cond.wait()
                    if not self._pending or (self._closing and time.monotonic() >= self._deadline):
                        return
                    entry = self._pending[0]
                result = self._send(entry)
                with self._cond:
                    if result:
                        if self._pending and self._pending[0] is entry:
                            self._pending.popleft()
                        self._acknowledge(entry)
                        self._accepting()
                        continue
                    self._failures += 1
                    if self._failures == 1:
                        _logger.warning(
                            "tensorboard: %s did not accept an export; it is kept in %s and tried again (at most "
                            "%g s apart) with the ones after it, in order",
                            self._describe(),
                            entry.journal.path if entry.journal is not None else "memory",
                            self.policy.max_delay,
                        )
                    if self._closing:
                        delay = self.shutdown_delay
                        self._cond.wait(max(min(delay, self._deadline - time.monotonic()), 0))
                    else:
                        if self._failures % self.probe_every == 0 and len(self._pending) > 1:
                            self._cond.release()
                            try:
                                refused = self._probe(entry)
                            finally:
                                self._cond.acquire()
                            if refused:
                                continue
                        self._cond.wait(self.policy.delay(self._failures))
        finally:
            logger.removeFilter(self._quiet)
            with self._cond:
                self._cond.notify_all()

    def _accepting(self) -> None:
        """An entry was accepted (under ``_cond``): says so once after failures, and wakes ``force_flush``."""
        if self._failures:
            _logger.warning(
                "tensorboard: %s accepts exports again; sending the %d kept", self._describe(), len(self._pending)
            )
        self._failures = 0
        self._cond.notify_all()

    def _probe(self, head: _Entry) -> bool:
        """Tries the entry after ``head``, then ``head`` once more: if the one is accepted and ``head`` is
        still not, ``head`` is refused for good (a 400, a request too large), not delayed by an outage
        (the exporter does not say why it failed), and is dropped so that it cannot hold back the rest
        for ever. Whether ``head`` left the queue, either way."""
        with self._cond:
            if len(self._pending) < 2 or self._pending[0] is not head:
                return False
            second = self._pending[1]
        if not self._send(second):
            return False
        with self._cond:
            self._pending.remove(second)
            self._acknowledge(second)
        accepted = self._send(head)  # the destination may have come back just now: not refused after all
        with self._cond:
            self._pending.remove(head)
            self._acknowledge(head)
            if accepted:
                self._accepting()
            self._failures = 0
            self._cond.notify_all()
        if not accepted:
            _logger.error(
                "tensorboard: %s refuses an export it was offered %d times while it accepts the one after it; "
                "that export (in %s) is dropped",
                self._describe(),
                self.probe_every + 1,
                head.journal.path if head.journal is not None else "memory",
            )
        return True

    def _send(self, entry: _Entry) -> bool:
        """One try; whether the real exporter accepted the entry (an entry that cannot be read is dropped)."""
        try:
            payload = entry.payload
            if payload is None:
                assert entry.journal is not None
                payload = entry.journal.payload(entry.offset, entry.length)
            data = pickle.loads(payload)  # written by this package into a file only its user can write
        except Exception:  # one unreadable entry must not hold back the rest
            _logger.exception("tensorboard: a journaled export cannot be read; it is dropped")
            return True
        try:
            return self._inner.export(data) is MetricExportResult.SUCCESS
        except Exception:  # an exporter's bug counts as a failed try
            _logger.exception("tensorboard: the exporter failed")
            return False

    def _describe(self) -> str:
        endpoint = self.destination()["endpoint"]
        return f"{self._name} exporter ({endpoint})" if endpoint else f"{self._name} exporter"


class _QuietWhileRetrying(logging.Filter):
    """Drops the real exporter's own messages about a kept export's retries: one warning says it all."""

    def __init__(self, owner: DurableMetricExporter) -> None:
        super().__init__()
        self._owner = owner

    def filter(self, record: logging.LogRecord) -> bool:
        return not (self._owner._failures and threading.current_thread() is self._owner._thread)


def _count_points(claimed: journal.Journal, contents: journal.Contents) -> int:
    total = 0
    for _, offset, length in contents.pending:
        try:
            total += points(pickle.loads(claimed.payload(offset, length)))
        except Exception:  # noqa: BLE001 - a count for a message; the send reports a bad entry
            continue
    return total
