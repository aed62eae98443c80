"""Reading captured points back out of an in-memory reader and out of TensorBoard's event files."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from opentelemetry.sdk.metrics.export import InMemoryMetricReader


@dataclass(frozen=True)
class Point:
    tag: str
    log_dir: str | None
    step: int | None
    value: float
    time_ns: int
    extra: tuple[tuple[str, Any], ...] = ()


def metric(data: Any, name: str) -> list[Any]:
    """The data points of metric ``name`` in a ``MetricsData``."""
    if data is None:
        return []
    return [
        point
        for rm in data.resource_metrics
        for sm in rm.scope_metrics
        for m in sm.metrics
        if m.name == name
        for point in m.data.data_points
    ]


def points(data: Any) -> list[Point]:
    """Every exemplar of ``tensorboard.scalar`` as a :class:`Point`."""
    found = []
    for point in metric(data, "tensorboard.scalar"):
        attributes = dict(point.attributes)
        for exemplar in point.exemplars:
            extra = dict(exemplar.filtered_attributes or {})
            step = extra.pop("tensorboard.step", None)
            found.append(
                Point(
                    attributes["tensorboard.tag"],
                    attributes.get("tensorboard.log_dir"),
                    step,
                    exemplar.value,
                    exemplar.time_unix_nano,
                    tuple(sorted(extra.items())),
                )
            )
    return found


def collect(reader: InMemoryMetricReader) -> list[Point]:
    return points(reader.get_metrics_data())


def event_scalars(log_dir: str | Path) -> list[tuple[str, int, float, float]]:
    """``(tag, step, value, wall_time)`` of every scalar TensorBoard wrote under ``log_dir``."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader  # noqa: PLC0415
    from tensorboard.util import tensor_util  # noqa: PLC0415

    rows = []
    for path in sorted(Path(log_dir).rglob("events.out.tfevents.*")):
        for event in EventFileLoader(str(path)).Load():
            for value in event.summary.value:
                if value.HasField("tensor") and value.metadata.plugin_data.plugin_name == "scalars":
                    number = float(tensor_util.make_ndarray(value.tensor))
                elif value.HasField("simple_value"):
                    number = value.simple_value
                else:
                    continue
                rows.append((value.tag, event.step, number, event.wall_time))
    return rows
