"""Process, host and GPU metrics beside the TensorBoard points, sampled once per interval (default 10 s).

Off unless asked for: ``tracelet.start_logging(..., system_metrics=True)``
(``TRACELET_SYSTEM_METRICS=true``), or, with no code, ``OTEL_PYTHON_TENSORBOARD_SYSTEM_METRICS=true``
under ``opentelemetry-instrument`` (the ``tensorboard`` configurator). The interval is
``system_metrics_interval`` (``TRACELET_SYSTEM_METRICS_INTERVAL``) or
``OTEL_PYTHON_TENSORBOARD_SYSTEM_METRICS_INTERVAL``, in seconds: 10 by default, like MLflow's own
system metrics. With any SDK ``MeterProvider``: :func:`start` ``(provider, readers)``.

Instruments, all on the meter ``opentelemetry.instrumentation.tensorboard.system_metrics``
(:data:`SCOPE`: the MLflow mapping reads system metrics of this meter only, so another service's
system metrics arriving through the same collector make no MLflow run):

- the OpenTelemetry system-metrics instrumentation's (``opentelemetry-instrumentation-system-metrics``:
  its instruments and callbacks, created on this meter instead of its own), with its names, units
  and attributes: ``system.cpu.time``/``.utilization`` (per ``cpu`` and
  ``state``), ``system.memory.usage``/``.utilization``, ``system.swap.*``, ``system.disk.io``/
  ``.operations``/``.time`` and ``system.network.io``/``.packets``/``.errors``/``.dropped_packets``
  (per ``device`` and ``direction``), ``process.cpu.time``/``.utilization``,
  ``process.memory.usage``/``.virtual``, ``process.disk.io``, ``process.context_switches``,
  ``process.open_file_descriptor.count``, ``process.thread.count``, ``cpython.gc.*``. That is
  :data:`CONFIG`: the instrumentation's default less its deprecated ``process.runtime.*``
  duplicates and ``system.network.connections`` (it walks every socket of the host: half the cost
  of a sample), plus the ``iowait`` CPU state (so the busy share is psutil's, as MLflow reports
  it). ``OTEL_PYTHON_SYSTEM_METRICS_EXCLUDED_METRICS`` (glob patterns) leaves more out, as it does
  for that instrumentation;
- ``system.filesystem.usage`` (ObservableUpDownCounter, By; ``system.filesystem.state`` =
  ``used``/``free``/``reserved``, ``system.filesystem.mountpoint`` = ``/``) and
  ``system.filesystem.utilization`` (ObservableGauge, 1) of the root filesystem, what MLflow's
  disk metrics report and the instrumentation does not;
- NVIDIA GPUs through NVML: :mod:`~opentelemetry.instrumentation.tensorboard.nvml`
  (``hw.gpu.utilization``, ``hw.gpu.memory.usage``/``.limit``/``.utilization``, ``hw.power``,
  ``hw.temperature``, per ``hw.id``). Without NVML or a GPU one log line says so.

Sampling. An observable instrument is observed whenever a reader collects, and the readers of
the push backends collect at the hand-off interval (0.5 s by default, or as configured). A reader has one
interval for every instrument, and the SDK has no per-instrument interval. So the instruments'
callbacks are gated: :func:`pace` wraps the ``collect`` of each periodic reader (the push
backends) so that one of its collections per interval is a *sampling* collection, and the
callbacks observe only during those, returning nothing otherwise. No observation means no data
point, so each push reader exports one point per series per interval (for the MLflow run: one
row per key per sample), while the TensorBoard points keep their hand-off interval. The
decision is per reader (a context variable set around its collection), so two push backends each
get every sample. Readers that are not paced (Prometheus, which collects when scraped) observe at
each collection: there the scrape interval is the sampling interval; so does a periodic reader
whose own interval is longer than the sampling interval, at each of its collections. Rates that psutil computes
since its previous call (CPU utilization) cover the time since the previous sample of any reader;
one observation at start primes them. A sample costs the collecting thread 6 to 9 ms of Python
(measured on an idle 2-core machine), once per interval.
"""

from __future__ import annotations

import contextvars
import fnmatch
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from opentelemetry.metrics import CallbackOptions, Meter, MeterProvider, Observation
from opentelemetry.sdk.metrics.export import MetricReader, PeriodicExportingMetricReader

from opentelemetry.instrumentation.tensorboard import nvml
from opentelemetry.instrumentation.tensorboard.capture import warn_once
from opentelemetry.instrumentation.tensorboard.environment_variables import (
    OTEL_PYTHON_TENSORBOARD_SYSTEM_METRICS,
    OTEL_PYTHON_TENSORBOARD_SYSTEM_METRICS_INTERVAL,
    read_flag,
    read_positive_float,
)
from opentelemetry.instrumentation.tensorboard.version import __version__

_logger = logging.getLogger(__name__)

SCOPE = "opentelemetry.instrumentation.tensorboard.system_metrics"
DEFAULT_INTERVAL = 10.0  # seconds, as MLflow samples its system metrics
EXCLUDED_ENV = "OTEL_PYTHON_SYSTEM_METRICS_EXCLUDED_METRICS"  # the system-metrics instrumentation's own
ROOT = os.path.abspath(os.sep)

CONFIG: dict[str, list[str] | None] = {
    "system.cpu.time": ["idle", "user", "system", "irq", "iowait"],
    "system.cpu.utilization": ["idle", "user", "system", "irq", "iowait"],
    "system.memory.usage": ["used", "free", "cached"],
    "system.memory.utilization": ["used", "free", "cached"],
    "system.swap.usage": ["used", "free"],
    "system.swap.utilization": ["used", "free"],
    "system.disk.io": ["read", "write"],
    "system.disk.operations": ["read", "write"],
    "system.disk.time": ["read", "write"],
    "system.network.dropped.packets": ["transmit", "receive"],
    "system.network.packets": ["transmit", "receive"],
    "system.network.errors": ["transmit", "receive"],
    "system.network.io": ["transmit", "receive"],
    "process.context_switches": ["involuntary", "voluntary"],
    "process.cpu.time": ["user", "system"],
    "process.cpu.utilization": ["user", "system"],
    "process.memory.usage": None,
    "process.memory.virtual": None,
    "process.open_file_descriptor.count": None,
    "process.thread.count": None,
    "process.disk.io": ["read", "write"],
    "cpython.gc.collections": None,
    "cpython.gc.collected_objects": None,
    "cpython.gc.uncollectable_objects": None,
}
"""What the system-metrics instrumentation measures here (its configuration format: metric -> states)."""

FILESYSTEM_USAGE = "system.filesystem.usage"
FILESYSTEM_UTILIZATION = "system.filesystem.utilization"
FILESYSTEM_STATE = "system.filesystem.state"
FILESYSTEM_MOUNTPOINT = "system.filesystem.mountpoint"

# Whether the collection running on this thread samples: set by a paced reader's collect;
# a reader that is not paced (a Prometheus scrape) samples at every collection.
_SAMPLING: contextvars.ContextVar[bool] = contextvars.ContextVar("tensorboard_system_metrics_sampling", default=True)

Callback = Callable[[CallbackOptions], Iterable[Observation]]


def enabled() -> bool:
    """Whether ``OTEL_PYTHON_TENSORBOARD_SYSTEM_METRICS`` asks for system metrics (default false)."""
    return read_flag(OTEL_PYTHON_TENSORBOARD_SYSTEM_METRICS, False)


def interval() -> float:
    """Seconds between two samples: ``OTEL_PYTHON_TENSORBOARD_SYSTEM_METRICS_INTERVAL``, else 10."""
    return read_positive_float(OTEL_PYTHON_TENSORBOARD_SYSTEM_METRICS_INTERVAL, DEFAULT_INTERVAL)


class _Cadence:
    """When a paced reader's next collection samples: the first one, then one per interval."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.next = time.monotonic()
        self._lock = threading.Lock()  # the reader's thread and a force_flush may collect at once

    def due(self) -> bool:
        with self._lock:
            now = time.monotonic()
            if now < self.next:
                return False
            # On schedule, without drifting by the reader's own interval; after a stall, no burst.
            self.next = self.next + self.seconds if now - self.next < self.seconds else now + self.seconds
            return True


def pace(reader: MetricReader, seconds: float) -> None:
    """Makes one of ``reader``'s collections per ``seconds`` a sampling one (see the module docstring)."""
    collect = reader.collect
    cadence = _Cadence(seconds)

    def paced_collect(timeout_millis: float = 10_000) -> None:
        token = _SAMPLING.set(cadence.due())
        try:
            collect(timeout_millis=timeout_millis)
        finally:
            _SAMPLING.reset(token)

    reader.collect = paced_collect  # type: ignore[method-assign]


class SystemMetrics:
    """The system and GPU instruments of one ``MeterProvider``; :meth:`stop` ends their sampling."""

    def __init__(self, provider: MeterProvider) -> None:
        self._provider = provider
        self._running = True
        self._callbacks: list[Callback] = []
        self._meters: dict[str | None, Meter] = {}
        self.gpus: nvml.Gpus | None = None

    def meter(self, schema_url: str | None = None) -> Meter:
        """This package's system-metrics meter, whose observable instruments observe only when sampling."""
        meter = self._meters.get(schema_url)
        if meter is None:
            real = self._provider.get_meter(SCOPE, __version__, schema_url)
            meter = self._meters[schema_url] = _GatedMeter(real, self)  # type: ignore[assignment]
        return meter

    def gated(self, name: str, callbacks: Sequence[Callback] | None) -> list[Callback]:
        """``callbacks`` that observe only in a sampling collection, and whose failure is said once."""
        gated = []
        for callback in callbacks or ():

            def observe(options: CallbackOptions, callback: Callback = callback) -> Iterable[Observation]:
                if not (self._running and _SAMPLING.get()):
                    return []
                try:
                    return list(callback(options))
                except Exception as exc:  # noqa: BLE001 - one unreadable metric must not stop the others
                    warn_once(
                        f"system-metrics:{name}",
                        "system metrics: %s cannot be read (%s: %s); it is left out",
                        name,
                        type(exc).__name__,
                        exc,
                    )
                    return []

            gated.append(observe)
        self._callbacks.extend(gated)
        return gated

    def prime(self) -> None:
        """Observes once, discarding: rates psutil computes since its previous call then cover a whole interval."""
        options = CallbackOptions()
        for callback in self._callbacks:
            callback(options)

    def stop(self) -> None:
        """No more samples; lets NVML go."""
        self._running = False
        if self.gpus is not None:
            self.gpus.close()
            self.gpus = None


class _GatedMeter:
    """A meter whose observable instruments observe through :meth:`SystemMetrics.gated`; the rest as is."""

    def __init__(self, meter: Meter, system: SystemMetrics) -> None:
        self._meter = meter
        self._system = system

    def create_observable_counter(
        self, name: str, callbacks: Sequence[Callback] | None = None, unit: str = "", description: str = ""
    ) -> Any:
        return self._meter.create_observable_counter(name, self._system.gated(name, callbacks), unit, description)

    def create_observable_up_down_counter(
        self, name: str, callbacks: Sequence[Callback] | None = None, unit: str = "", description: str = ""
    ) -> Any:
        gated = self._system.gated(name, callbacks)
        return self._meter.create_observable_up_down_counter(name, gated, unit, description)

    def create_observable_gauge(
        self, name: str, callbacks: Sequence[Callback] | None = None, unit: str = "", description: str = ""
    ) -> Any:
        return self._meter.create_observable_gauge(name, self._system.gated(name, callbacks), unit, description)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._meter, name)


class _GatedProvider:
    """What the system-metrics instrumentation gets as its ``meter_provider``: hands out the gated meter."""

    def __init__(self, system: SystemMetrics) -> None:
        self._system = system

    def get_meter(
        self, name: str, version: str | None = None, schema_url: str | None = None, attributes: Any = None
    ) -> Meter:
        return self._system.meter(schema_url)


def config() -> dict[str, list[str] | None]:
    """:data:`CONFIG` less what ``OTEL_PYTHON_SYSTEM_METRICS_EXCLUDED_METRICS`` excludes."""
    patterns = [part.strip() for part in os.environ.get(EXCLUDED_ENV, "").split(",") if part.strip()]
    return {name: states for name, states in CONFIG.items() if not any(fnmatch.fnmatch(name, p) for p in patterns)}


def start(provider: MeterProvider, readers: Iterable[MetricReader], seconds: float | None = None) -> SystemMetrics:
    """Adds the system and GPU instruments to ``provider`` and paces its periodic ``readers``.

    ``seconds``: the interval (default :func:`interval`). Each missing part (the system-metrics
    instrumentation, NVML, a GPU) is said once and left out; the rest goes on.
    """
    seconds = interval() if seconds is None else seconds
    system = SystemMetrics(provider)
    gated = _GatedProvider(system)
    try:
        instrumentor = _instrumentor()
    except ImportError as exc:
        warn_once(
            "system-metrics-missing",
            "system metrics: process and host metrics need opentelemetry-instrumentation-system-metrics (%s); "
            "they are left out",
            exc,
        )
    else:
        instrumentor.instrument(meter_provider=gated, skip_dep_check=True)
        _filesystem(system.meter())
    system.gpus = nvml.start(system.meter())
    system.prime()
    for reader in readers:
        if isinstance(reader, PeriodicExportingMetricReader):
            pace(reader, seconds)
    _logger.debug("system metrics: sampled every %g s", seconds)
    return system


def _instrumentor() -> Any:
    """A system-metrics instrumentor of its own for this provider, with :func:`config`."""
    from opentelemetry.instrumentation.system_metrics import SystemMetricsInstrumentor  # noqa: PLC0415

    class OwnSystemMetricsInstrumentor(SystemMetricsInstrumentor):
        """Not the process-wide singleton the instrumentation's class is, which instruments one provider, once."""

        def __new__(cls, *args: Any, **kwargs: Any) -> OwnSystemMetricsInstrumentor:
            return object.__new__(cls)

    return OwnSystemMetricsInstrumentor(config=config())


def _filesystem(meter: Meter) -> None:
    """The root filesystem's usage, which MLflow's disk metrics report and the instrumentation does not."""
    import psutil  # noqa: PLC0415 - comes with the system-metrics instrumentation

    def states() -> list[tuple[str, int, int]]:
        usage = psutil.disk_usage(ROOT)
        reserved = max(usage.total - usage.used - usage.free, 0)
        return [
            (state, value, usage.total)
            for state, value in (("used", usage.used), ("free", usage.free), ("reserved", reserved))
        ]

    def usage(_options: CallbackOptions) -> Iterable[Observation]:
        for state, value, _total in states():
            yield Observation(value, {FILESYSTEM_STATE: state, FILESYSTEM_MOUNTPOINT: ROOT})

    def utilization(_options: CallbackOptions) -> Iterable[Observation]:
        for state, value, total in states():
            if total:
                yield Observation(value / total, {FILESYSTEM_STATE: state, FILESYSTEM_MOUNTPOINT: ROOT})

    meter.create_observable_up_down_counter(
        FILESYSTEM_USAGE, [usage], unit="By", description="Filesystem bytes used, free and reserved."
    )
    meter.create_observable_gauge(
        FILESYSTEM_UTILIZATION, [utilization], unit="1", description="Share of the filesystem used, free and reserved."
    )
