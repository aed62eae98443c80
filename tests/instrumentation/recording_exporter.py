"""A push exporter for the journal tests: records what it accepts in a file, refuses while a flag file exists.

Importable by name (``recording_exporter:RecordingExporter``), so that a
:class:`~opentelemetry.instrumentation.tensorboard.durable_exporter.DurableMetricExporter` in another
process can build it as the export process builds the real one.
"""

from __future__ import annotations

import os
from typing import Any

from opentelemetry.sdk.metrics.export import MetricExporter, MetricExportResult, MetricsData, ResourceMetrics
from opentelemetry.sdk.resources import Resource


def marked(mark: str) -> MetricsData:
    """An export that says which it is (resource attribute ``mark``), and nothing else."""
    return MetricsData(
        resource_metrics=[ResourceMetrics(resource=Resource({"mark": mark}), scope_metrics=[], schema_url="")]
    )


def mark_of(data: MetricsData) -> str:
    return str(data.resource_metrics[0].resource.attributes["mark"])


class RecordingExporter(MetricExporter):
    """Appends the mark of each export it accepts to ``record``; refuses (FAILURE) every export while
    ``refuse`` exists (an outage), and always those marked one of ``refused`` (a 400)."""

    def __init__(self, record: str, refuse: str = "", refused: tuple[str, ...] = (), **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.record = record
        self.refuse = refuse
        self.refused = refused
        self.tries = 0

    def export(self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any) -> MetricExportResult:
        self.tries += 1
        if (self.refuse and os.path.exists(self.refuse)) or mark_of(metrics_data) in self.refused:
            return MetricExportResult.FAILURE
        with open(self.record, "a", encoding="utf-8") as file:
            file.write(mark_of(metrics_data) + "\n")
        return MetricExportResult.SUCCESS

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return True

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        pass


def recorded(path: str | os.PathLike[str]) -> list[str]:
    """The marks accepted so far, in order."""
    try:
        with open(path, encoding="utf-8") as file:
            return file.read().split()
    except FileNotFoundError:
        return []
