"""How often each route hands its points over: what a SIGKILL of the training process can cost.

A point is safe from a killed training process once it is in the helper process (its exporter
journals it), so readers whose exporter runs there collect every ``HANDOFF_INTERVAL`` unless told
otherwise, instead of the SDK's 60 s; exporters in the training process and the console keep 5 s.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.sdk.metrics.export import ConsoleMetricExporter

from opentelemetry.instrumentation.tensorboard import configurator, export_process
from opentelemetry.instrumentation.tensorboard.export_process import ProcessMetricExporter
from tracelet.core import pipeline
from tracelet.settings import TraceletSettings


class Readers:
    """Stands in for ``PeriodicExportingMetricReader``: records what each reader was built with."""

    def __init__(self) -> None:
        self.built: list[tuple[Any, float | None]] = []

    def __call__(self, exporter: Any, export_interval_millis: float | None = None) -> tuple[Any, float | None]:
        self.built.append((exporter, export_interval_millis))
        return exporter, export_interval_millis


@pytest.fixture
def readers(monkeypatch: pytest.MonkeyPatch) -> Readers:
    recorded = Readers()
    monkeypatch.setattr(configurator, "PeriodicExportingMetricReader", recorded)
    monkeypatch.setattr(pipeline, "PeriodicExportingMetricReader", recorded)
    monkeypatch.setattr(configurator, "meter_provider", lambda *args, **kwargs: None)
    monkeypatch.setattr(configurator, "set_meter_provider", lambda provider: None)
    monkeypatch.delenv("OTEL_METRIC_EXPORT_INTERVAL", raising=False)
    monkeypatch.delenv(export_process.EXPORT_PROCESS_ENV, raising=False)
    for name in TraceletSettings.model_fields:
        monkeypatch.delenv(f"TRACELET_{name.upper()}", raising=False)
    return recorded


def _zero_code() -> None:
    """Builds the readers ``opentelemetry-instrument`` builds for ``OTEL_METRICS_EXPORTER=otlp,console``."""
    configurator._init_metrics({"otlp": OTLPMetricExporter, "console": ConsoleMetricExporter})


def test_zero_code_hands_off_every_half_second_unless_the_sdk_variable_says_otherwise(
    readers: Readers, monkeypatch: pytest.MonkeyPatch
) -> None:
    _zero_code()
    (helper, helper_ms), (console, console_ms) = readers.built
    assert isinstance(helper, ProcessMetricExporter)
    assert helper_ms == export_process.HANDOFF_INTERVAL * 1000 == 500
    assert isinstance(console, ConsoleMetricExporter)
    assert console_ms is None  # the SDK's own default (OTEL_METRIC_EXPORT_INTERVAL, else 60 s)

    readers.built.clear()
    monkeypatch.setenv("OTEL_METRIC_EXPORT_INTERVAL", "5000")
    _zero_code()
    assert [ms for _, ms in readers.built] == [None, None]  # the SDK reads the variable itself


def test_zero_code_in_process_exporters_keep_the_sdk_default(readers: Readers, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(export_process.EXPORT_PROCESS_ENV, "false")
    _zero_code()
    assert [(type(exporter), ms) for exporter, ms in readers.built] == [
        (OTLPMetricExporter, None),
        (ConsoleMetricExporter, None),
    ]


@pytest.mark.parametrize(
    ("backend", "export_interval", "helper", "expected_ms"),
    [
        ("mlflow", None, True, 500),
        ("otlp", None, True, 500),
        ("console", None, False, 5000),
        ("mlflow", 2.0, True, 2000),
        ("console", 0.25, False, 250),
    ],
)
def test_start_logging_intervals(
    readers: Readers,
    tmp_path: Path,
    backend: str,
    export_interval: float | None,
    helper: bool,
    expected_ms: float,
) -> None:
    settings = TraceletSettings(
        backend=backend,
        export_interval=export_interval,
        tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
        spool_dir=tmp_path / "spool",
        otlp_endpoint="http://127.0.0.1:4318",
    )
    pipeline._READERS[backend](settings, pipeline.Pipeline())
    ((exporter, ms),) = readers.built
    assert isinstance(exporter, ProcessMetricExporter) is helper
    assert ms == expected_ms


def test_start_logging_in_process_exporters_keep_five_seconds(
    readers: Readers, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(export_process.EXPORT_PROCESS_ENV, "false")
    settings = TraceletSettings(backend="otlp", otlp_endpoint="http://127.0.0.1:4318")
    pipeline._READERS["otlp"](settings, pipeline.Pipeline())
    ((exporter, ms),) = readers.built
    assert isinstance(exporter, OTLPMetricExporter)
    assert ms == 5000
