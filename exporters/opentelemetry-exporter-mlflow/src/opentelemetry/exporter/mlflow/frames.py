"""What the exporter hands to its delivery process: one export's mapped metrics, packed in one call.

The exporting (training) process does no per-point Python work: :func:`encode` keeps only the
metrics the MLflow mapping reads (``tensorboard.scalar``, ``tensorboard.hparam``,
``mlflow.run.tag``) and pickles them in one C call. Exemplars that come as the TensorBoard
instrumentation's ``ScalarBlock`` travel as its ``points`` list, as is; any other exemplars as
``(value, time_unix_nano, filtered_attributes)``. :func:`decode`, in the delivery process, gives
back the flat stream :meth:`~opentelemetry.exporter.mlflow.mapping.Mapper.map` takes, the same
one the OTLP receiver produces.

A frame is a pickle made by the parent process of the delivery process and read only by it, over
the pipe between them; it is never written to disk nor read from elsewhere.
"""

from __future__ import annotations

import pickle
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from opentelemetry.exporter.mlflow.mapping import MAPPED, STEP, Exemplar, Flat, wall_ms

_BLOCK = "b"  # exemplars as (value, step, wall time s, tag, log dir, extra) tuples
_EXEMPLARS = "e"  # exemplars as (value, time_unix_nano, filtered_attributes)

# (resource attributes, [(metric name, point attributes, point value, kind, exemplars), ...])
Frame = list[tuple[dict[str, Any], list[tuple[str, dict[str, Any], float, str, list[Any]]]]]


def encode(data: Any) -> bytes | None:
    """One SDK ``MetricsData`` as a frame, or ``None`` when nothing in it maps to MLflow."""
    frame: Frame = []
    for resource_metrics in data.resource_metrics:
        found = []
        for scope_metrics in resource_metrics.scope_metrics:
            for metric in scope_metrics.metrics:
                if metric.name not in MAPPED:
                    continue
                for point in getattr(metric.data, "data_points", ()):
                    exemplars = point.exemplars or ()
                    block = getattr(exemplars, "points", None)
                    if block is not None:
                        kind, rows = _BLOCK, block
                    else:
                        kind = _EXEMPLARS
                        rows = [(e.value, e.time_unix_nano, dict(e.filtered_attributes or {})) for e in exemplars]
                    found.append((metric.name, dict(point.attributes or {}), point.value, kind, rows))
        if found:
            frame.append((dict(resource_metrics.resource.attributes), found))
    return pickle.dumps(frame, protocol=pickle.HIGHEST_PROTOCOL) if frame else None


def decode(payload: bytes) -> Iterator[Flat]:
    """The flat points of a frame made by :func:`encode`."""
    frame: Frame = pickle.loads(payload)
    for resource, metrics in frame:
        for name, attributes, value, kind, rows in metrics:
            yield resource, name, attributes, value, _block(rows) if kind == _BLOCK else rows


def _block(
    rows: Iterable[tuple[float, int | None, float, str, str | None, Mapping[str, Any] | None]],
) -> Iterator[Exemplar]:
    for value, step, walltime, _tag, _log_dir, extra in rows:
        attributes: dict[str, Any] = {} if step is None else {STEP: step}
        if extra:
            attributes.update(extra)
        yield value, wall_ms(walltime) * 1_000_000, attributes
