"""MLflow keys of the system and GPU samples: the names MLflow's own system metrics use, where one exists.

Read from the metrics of the meter ``opentelemetry.instrumentation.tensorboard.system_metrics``
only (:mod:`opentelemetry.instrumentation.tensorboard.system_metrics`, which samples them once per
interval), so system metrics of another service that reach the same collector make no MLflow run.
Every key is under ``system/``, as MLflow logs its own; MLflow's units (percent, megabytes of
10**6 bytes) replace OpenTelemetry's (fractions, bytes):

- ``system/cpu_utilization_percentage`` from ``system.cpu.utilization``: 100 x (1 - idle - iowait),
  averaged over the CPUs (psutil's ``cpu_percent``, which MLflow logs);
- ``system/system_memory_usage_megabytes`` from ``system.memory.usage`` {state=used}, / 10**6;
- ``system/system_memory_usage_percentage`` from ``system.memory.utilization`` {state=used}, x 100;
- ``system/disk_usage_megabytes`` and ``system/disk_available_megabytes`` from
  ``system.filesystem.usage`` {state=used, free} of the root filesystem, / 10**6;
- ``system/disk_usage_percentage`` from the same: 100 x used / (used + free), psutil's percent;
- ``system/network_receive_megabytes``, ``system/network_transmit_megabytes`` from
  ``system.network.io`` {direction=receive, transmit}: since the first sample, all devices, / 10**6;
- ``system/disk_read_megabytes`` *, ``system/disk_write_megabytes`` * from ``system.disk.io``
  {direction=read, write}: the same;
- ``system/process_cpu_utilization_percentage`` * from ``process.cpu.utilization``, x 100 (a share
  of all CPUs);
- ``system/process_memory_usage_megabytes`` * from ``process.memory.usage`` (resident), / 10**6;
- per GPU ``<i>`` (its ``hw.id``): ``system/gpu_<i>_utilization_percentage`` from
  ``hw.gpu.utilization`` {hw.gpu.task=general}, x 100; ``system/gpu_<i>_memory_usage_megabytes``
  from ``hw.gpu.memory.usage``, / 10**6; ``system/gpu_<i>_memory_usage_percentage`` from
  ``hw.gpu.memory.utilization``, x 100; ``system/gpu_<i>_power_usage_watts`` from ``hw.power``
  {hw.type=gpu}; ``system/gpu_<i>_temperature_celsius`` * from ``hw.temperature`` {hw.type=gpu}.

``*``: MLflow has no such metric; the name follows its pattern. MLflow's
``gpu_<i>_power_usage_percentage`` has no counterpart: OpenTelemetry has no metric for a power
limit. The other system metrics (CPU times, swap, packets, file descriptors, GC, GPU memory size)
go to Prometheus and OTLP only.

Rows: each sample (the points of one collection, which share its time) gives one row per key,
with step = the sample's index in the run, counted per key from 0 (MLflow's convention for its
system metrics) and timestamp = the collection time in ms. Counters and up-down counters may
arrive as deltas (the MLflow exporter asks for delta temporality) or as totals (OTLP's default):
deltas are summed per series into totals, so both give the same values. Counting starts with the
mapper: a receiver that restarts during a run counts steps from 0 again, and a delta stream it
joins midway sums from where it joined.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from opentelemetry.instrumentation.tensorboard.system_metrics import SCOPE

# (resource, metric name, attributes, value, time in ns, kind: "gauge", "delta" or "cumulative")
Sample = tuple[Mapping[str, Any], str, Mapping[str, Any], float, int, str]
# A metric's points in one sample: (attributes, value, value since the series' first sample)
Points = list[tuple[Mapping[str, Any], float, float]]

PREFIX = "system/"
MEGA = 1e6

# The metrics the table reads, with the attribute values a point must have to count.
_CPU = "cpu"
_FS_STATE = "system.filesystem.state"
READ = frozenset(
    {
        "system.cpu.utilization",
        "system.memory.usage",
        "system.memory.utilization",
        "system.filesystem.usage",
        "system.network.io",
        "system.disk.io",
        "process.cpu.utilization",
        "process.memory.usage",
        "hw.gpu.utilization",
        "hw.gpu.memory.usage",
        "hw.gpu.memory.utilization",
        "hw.power",
        "hw.temperature",
    }
)

_UNSAFE = re.compile(r"[^\w.\- ]")

__all__ = ["READ", "SCOPE", "Sample", "SystemKeys"]


def _where(points: Points, **attributes: str) -> Points:
    return [point for point in points if all(point[0].get(k) == v for k, v in attributes.items())]


def _one(points: Points, scale: float) -> Iterator[float]:
    for _attributes, value, _since in points[:1]:
        yield value * scale


def _since_first(points: Points) -> Iterator[float]:
    if points:
        yield sum(since for _attributes, _value, since in points) / MEGA


def _cpu_busy(points: Points) -> Iterator[float]:
    cpus = {attributes.get(_CPU) for attributes, _value, _since in points}
    if points:
        idle = sum(value for _a, value, _s in _where(points, state="idle") + _where(points, state="iowait"))
        yield 100 * (1 - idle / len(cpus))


def _filesystem(state: str) -> Any:
    return lambda points: _one(_where(points, **{_FS_STATE: state}), 1 / MEGA)


def _disk_share(points: Points) -> Iterator[float]:
    used, free = _where(points, **{_FS_STATE: "used"}), _where(points, **{_FS_STATE: "free"})
    if used and free and used[0][1] + free[0][1] > 0:
        yield 100 * used[0][1] / (used[0][1] + free[0][1])


# key -> (metric, how its value comes from that metric's points in one sample)
_HOST: dict[str, tuple[str, Any]] = {
    "cpu_utilization_percentage": ("system.cpu.utilization", _cpu_busy),
    "system_memory_usage_megabytes": ("system.memory.usage", lambda p: _one(_where(p, state="used"), 1 / MEGA)),
    "system_memory_usage_percentage": ("system.memory.utilization", lambda p: _one(_where(p, state="used"), 100)),
    "disk_usage_megabytes": ("system.filesystem.usage", _filesystem("used")),
    "disk_available_megabytes": ("system.filesystem.usage", _filesystem("free")),
    "disk_usage_percentage": ("system.filesystem.usage", _disk_share),
    "network_receive_megabytes": ("system.network.io", lambda p: _since_first(_where(p, direction="receive"))),
    "network_transmit_megabytes": ("system.network.io", lambda p: _since_first(_where(p, direction="transmit"))),
    "disk_read_megabytes": ("system.disk.io", lambda p: _since_first(_where(p, direction="read"))),
    "disk_write_megabytes": ("system.disk.io", lambda p: _since_first(_where(p, direction="write"))),
    "process_cpu_utilization_percentage": ("process.cpu.utilization", lambda p: _one(p, 100)),
    "process_memory_usage_megabytes": ("process.memory.usage", lambda p: _one(p, 1 / MEGA)),
}

# gpu_<i>_<key> -> (metric, attribute values a point must have, scale)
_GPU: dict[str, tuple[str, dict[str, str], float]] = {
    "utilization_percentage": ("hw.gpu.utilization", {"hw.gpu.task": "general"}, 100),
    "memory_usage_megabytes": ("hw.gpu.memory.usage", {}, 1 / MEGA),
    "memory_usage_percentage": ("hw.gpu.memory.utilization", {}, 100),
    "power_usage_watts": ("hw.power", {"hw.type": "gpu"}, 1),
    "temperature_celsius": ("hw.temperature", {"hw.type": "gpu"}, 1),
}


class SystemKeys:
    """Turns one run's samples into MLflow rows; keeps the step counters and the series' totals."""

    def __init__(self) -> None:
        self._steps: dict[Any, dict[str, int]] = {}
        self._totals: dict[tuple[Any, str, tuple], float] = {}
        self._first: dict[tuple[Any, str, tuple], float] = {}

    def rows(
        self, run: Any, samples: Iterable[tuple[str, Mapping[str, Any], float, int, str]]
    ) -> list[tuple[str, float, int, int]]:
        """(key, value, ms, step) rows of ``run`` from its points (name, attributes, value, ns, kind)."""
        by_time: dict[int, dict[str, Points]] = {}
        for name, attributes, value, time_unix_nano, kind in samples:
            series = (run, name, tuple(sorted(attributes.items())))
            if kind == "delta":
                value = self._totals[series] = self._totals.get(series, 0.0) + value
            first = self._first.setdefault(series, value)
            by_time.setdefault(time_unix_nano, {}).setdefault(name, []).append((attributes, value, value - first))
        rows: list[tuple[str, float, int, int]] = []
        steps = self._steps.setdefault(run, {})
        for time_unix_nano in sorted(by_time):
            ms = time_unix_nano // 1_000_000
            for key, value in _keys(by_time[time_unix_nano]):
                step = steps.get(key, 0)
                steps[key] = step + 1
                rows.append((key, value, ms, step))
        return rows


def _keys(metrics: Mapping[str, Points]) -> Iterator[tuple[str, float]]:
    for key, (metric, how) in _HOST.items():
        points = metrics.get(metric)
        if points:
            for value in how(points):
                yield PREFIX + key, value
    for suffix, (metric, where, scale) in _GPU.items():
        for attributes, value, _since in _where(metrics.get(metric, []), **where):
            device = _UNSAFE.sub("_", str(attributes.get("hw.id", "")))
            if device:
                yield f"{PREFIX}gpu_{device}_{suffix}", value * scale
