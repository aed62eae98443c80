"""System and GPU samples -> MLflow ``system/...`` rows (pure logic: in-memory readers, no server).

The GPU devices here are a stand-in ``pynvml`` module with fixed readings: these tests check how
tracelet turns NVML's answers into instruments and MLflow keys, not NVML itself (the real device
is tested in tests/tracelet/test_system_metrics.py where one exists).
"""

from __future__ import annotations

import logging
import math
import sys
import types
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.exporter.otlp.proto.common.metrics_encoder import encode_metrics
from opentelemetry.metrics import Observation
from opentelemetry.sdk.metrics import MeterProvider, ObservableCounter, ObservableUpDownCounter
from opentelemetry.sdk.metrics.export import AggregationTemporality, InMemoryMetricReader, MetricsData
from opentelemetry.sdk.resources import Resource

from opentelemetry.exporter.mlflow.mapping import Mapper
from opentelemetry.instrumentation.tensorboard import nvml, system_metrics
from opentelemetry.instrumentation.tensorboard.system_metrics import SCOPE, SystemMetrics

RESOURCE = Resource.create({"service.instance.id": "host-1", "mlflow.run.name": "sys"})
DELTA = {kind: AggregationTemporality.DELTA for kind in (ObservableCounter, ObservableUpDownCounter)}


def rows(mapper: Mapper, data: MetricsData | None) -> list[tuple[str, float, int, int]]:
    return [row for batch in mapper.from_sdk(data) for row in batch.metrics] if data else []


def by_key(found: list[tuple[str, float, int, int]]) -> dict[str, list[tuple[int, float]]]:
    keyed: dict[str, list[tuple[int, float]]] = {}
    for key, value, _ms, step in found:
        keyed.setdefault(key, []).append((step, value))
    return keyed


class Readings:
    """Values the callbacks below report at the next collection."""

    def __init__(self) -> None:
        self.network = {"eth0": (0, 0), "lo": (0, 0)}  # device -> (received, transmitted) bytes
        self.cpu = {1: (0.5, 0.1), 2: (0.3, 0.1)}  # cpu -> (idle, iowait) shares
        self.filesystem = (30e9, 60e9, 10e9)  # used, free, reserved bytes


def instrument(provider: MeterProvider, readings: Readings) -> None:
    """Host instruments of the system-metrics meter, with chosen values (what psutil would return)."""
    meter = SystemMetrics(provider).meter()

    def network(_options: Any) -> Iterator[Observation]:
        for device, (received, sent) in readings.network.items():
            yield Observation(received, {"device": device, "direction": "receive"})
            yield Observation(sent, {"device": device, "direction": "transmit"})

    def cpu(_options: Any) -> Iterator[Observation]:
        for number, (idle, iowait) in readings.cpu.items():
            for state, value in (("idle", idle), ("iowait", iowait), ("user", 1 - idle - iowait)):
                yield Observation(value, {"cpu": number, "state": state})

    def filesystem(_options: Any) -> Iterator[Observation]:
        for state, value in zip(("used", "free", "reserved"), readings.filesystem, strict=True):
            yield Observation(value, {"system.filesystem.state": state, "system.filesystem.mountpoint": "/"})

    meter.create_observable_counter("system.network.io", [network], unit="By")
    meter.create_observable_gauge("system.cpu.utilization", [cpu], unit="1")
    meter.create_observable_up_down_counter("system.filesystem.usage", [filesystem], unit="By")


@pytest.mark.parametrize("temporality", ["cumulative", "delta"])
def test_host_samples_become_mlflow_keys_whatever_the_temporality(temporality: str) -> None:
    reader = InMemoryMetricReader(preferred_temporality=DELTA if temporality == "delta" else None)
    provider = MeterProvider(metric_readers=[reader], resource=RESOURCE)
    readings = Readings()
    instrument(provider, readings)
    mapper = Mapper()
    found = []
    for received in (1_000_000, 3_000_000, 6_000_000):
        readings.network = {"eth0": (received, received // 2), "lo": (500, 500)}
        found += rows(mapper, reader.get_metrics_data())
    keyed = by_key(found)
    assert keyed["system/network_receive_megabytes"] == [(0, 0.0), (1, 2.0), (2, 5.0)]  # since the first sample
    assert keyed["system/network_transmit_megabytes"] == [(0, 0.0), (1, 1.0), (2, 2.5)]
    assert keyed["system/cpu_utilization_percentage"] == [(step, pytest.approx(50.0)) for step in range(3)]
    assert keyed["system/disk_usage_megabytes"] == [(step, 30_000.0) for step in range(3)]
    assert keyed["system/disk_available_megabytes"] == [(step, 60_000.0) for step in range(3)]
    assert keyed["system/disk_usage_percentage"] == [(step, pytest.approx(100 / 3)) for step in range(3)]
    stamps = sorted({(step, ms) for _key, _value, ms, step in found})
    assert len(stamps) == 3 and [ms for _, ms in stamps] == sorted(ms for _, ms in stamps)


def test_the_collector_route_gives_the_same_rows_as_the_exporter() -> None:
    """The OTLP walker (``tracelet receive``) and the SDK walker (the exporter) read the same samples alike."""
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader], resource=RESOURCE)
    system = system_metrics.start(provider, [reader], 3600)
    try:
        direct, received = Mapper(), Mapper()
        for _ in range(2):
            data = reader.get_metrics_data()
            exported = rows(direct, data)
            assert {key for key, *_ in exported} >= {"system/cpu_utilization_percentage", "system/disk_usage_megabytes"}
            assert exported == [row for batch in received.from_otlp(encode_metrics(data)) for row in batch.metrics]
    finally:
        system.stop()


def test_system_metrics_of_another_meter_make_no_mlflow_run() -> None:
    """Another service's system-metrics instrumentation through the same collector: no run, no rows."""
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader], resource=RESOURCE)
    meter = provider.get_meter("opentelemetry.instrumentation.system_metrics")
    meter.create_observable_gauge("system.memory.usage", [lambda _o: [Observation(1e9, {"state": "used"})]])
    data = reader.get_metrics_data()
    assert Mapper().from_sdk(data) == []
    assert Mapper().from_otlp(encode_metrics(data)) == []


def test_a_paced_reader_samples_once_per_interval_and_the_others_at_each_collection() -> None:
    paced, scraped = InMemoryMetricReader(), InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[paced, scraped], resource=RESOURCE)
    system = system_metrics.start(provider, [paced, scraped], 3600)  # paces periodic readers only
    system_metrics.pace(paced, 3600)
    try:
        assert {"system.memory.usage", "process.cpu.time"} <= _names(paced.get_metrics_data())  # at once
        for _ in range(3):
            assert _names(paced.get_metrics_data()) == set()  # and not again within the hour
            assert "system.memory.usage" in _names(scraped.get_metrics_data())  # unpaced: at each collection
    finally:
        system.stop()
    assert _names(scraped.get_metrics_data()) == set()  # stopped: no more samples


def _names(data: MetricsData | None) -> set[str]:
    if data is None:
        return set()
    return {
        metric.name
        for rm in data.resource_metrics
        for sm in rm.scope_metrics
        if sm.scope.name == SCOPE
        for metric in sm.metrics
        if any(True for _ in metric.data.data_points)
    }


# GPUs through a stand-in NVML ---------------------------------------------------------------------


class _NvmlError(Exception):  # pynvml.NVMLError's stand-in
    pass


class _NotSupportedError(_NvmlError):
    def __str__(self) -> str:
        return "Not Supported"


def fake_pynvml(devices: list[dict[str, Any]]) -> types.ModuleType:
    """A ``pynvml`` answering as NVML would for ``devices`` (a reading that raises is not supported)."""
    module = types.ModuleType("pynvml")
    module.NVMLError = _NvmlError  # type: ignore[attr-defined]
    module.NVML_TEMPERATURE_GPU = 0  # type: ignore[attr-defined]
    module.nvmlInit = lambda: None  # type: ignore[attr-defined]
    module.nvmlShutdown = lambda: None  # type: ignore[attr-defined]
    module.nvmlDeviceGetCount = lambda: len(devices)  # type: ignore[attr-defined]
    module.nvmlDeviceGetHandleByIndex = lambda index: devices[index]  # type: ignore[attr-defined]
    module.nvmlDeviceGetName = lambda device: device["name"]  # type: ignore[attr-defined]

    def reading(name: str) -> Any:
        def read(device: dict[str, Any], *_args: Any) -> Any:
            value = device[name]
            if isinstance(value, Exception):
                raise value
            return value

        return read

    module.nvmlDeviceGetUtilizationRates = reading("utilization")  # type: ignore[attr-defined]
    module.nvmlDeviceGetMemoryInfo = reading("memory")  # type: ignore[attr-defined]
    module.nvmlDeviceGetPowerUsage = reading("power_mw")  # type: ignore[attr-defined]
    module.nvmlDeviceGetTemperature = reading("temperature")  # type: ignore[attr-defined]
    return module


DEVICES = [
    {
        "name": b"NVIDIA A100-SXM4-80GB",
        "utilization": types.SimpleNamespace(gpu=37, memory=12),
        "memory": types.SimpleNamespace(used=20_000_000_000, total=80_000_000_000),
        "power_mw": 250_000,
        "temperature": 61,
    },
    {
        "name": "NVIDIA GeForce RTX 3060",
        "utilization": types.SimpleNamespace(gpu=0, memory=0),
        "memory": types.SimpleNamespace(used=500_000_000, total=12_000_000_000),
        "power_mw": _NotSupportedError(),
        "temperature": 40,
    },
]


def test_gpu_readings_become_hw_gpu_instruments_and_mlflow_gpu_keys(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml(DEVICES))
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader], resource=RESOURCE)
    system = SystemMetrics(provider)
    gpus = nvml.start(system.meter())
    assert gpus is not None
    mapper = Mapper()
    with caplog.at_level(logging.WARNING):
        first, second = reader.get_metrics_data(), reader.get_metrics_data()
    gpus.close()

    points = {
        (metric.name, point.attributes["hw.id"]): (point.value, dict(point.attributes), metric.unit)
        for rm in first.resource_metrics
        for sm in rm.scope_metrics
        for metric in sm.metrics
        for point in metric.data.data_points
    }
    a100 = {"hw.id": "0", "hw.name": "NVIDIA A100-SXM4-80GB", "hw.vendor": "nvidia"}
    assert points[("hw.gpu.utilization", "0")] == (0.37, {**a100, "hw.gpu.task": "general"}, "1")
    assert points[("hw.gpu.memory.usage", "0")] == (20_000_000_000, a100, "By")
    assert points[("hw.gpu.memory.limit", "0")] == (80_000_000_000, a100, "By")
    assert points[("hw.gpu.memory.utilization", "0")] == (0.25, a100, "1")
    assert points[("hw.power", "0")] == (250.0, {**a100, "hw.type": "gpu"}, "W")
    assert points[("hw.temperature", "0")] == (61, {**a100, "hw.type": "gpu"}, "Cel")
    assert points[("hw.gpu.utilization", "1")][1]["hw.name"] == "NVIDIA GeForce RTX 3060"
    assert ("hw.power", "1") not in points  # not supported by that board: left out
    said = [r.getMessage() for r in caplog.records if "hw.power" in r.getMessage()]
    assert len(said) == 1 and "GPU 1" in said[0] and "Not Supported" in said[0]  # once, over two collections

    keyed = by_key(rows(mapper, first) + rows(mapper, second))
    assert keyed["system/gpu_0_utilization_percentage"] == [(0, 37.0), (1, 37.0)]
    assert keyed["system/gpu_0_memory_usage_megabytes"] == [(0, 20_000.0), (1, 20_000.0)]
    assert keyed["system/gpu_0_memory_usage_percentage"] == [(0, 25.0), (1, 25.0)]
    assert keyed["system/gpu_0_power_usage_watts"] == [(0, 250.0), (1, 250.0)]
    assert keyed["system/gpu_0_temperature_celsius"] == [(0, 61.0), (1, 61.0)]
    assert math.isclose(keyed["system/gpu_1_memory_usage_percentage"][0][1], 500 / 12_000 * 100)
    assert "system/gpu_1_power_usage_watts" not in keyed
