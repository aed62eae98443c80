"""The ``OTEL_PYTHON_TENSORBOARD_*`` settings of the TensorBoard instrumentation, and how settings are read.

Each variable is read when it is used, never at import: a value that cannot be read is reported
once, naming the variable, and the default applies, so a typo in a job script costs a warning,
not the import of the training code. The readers below serve the MLflow exporter's
``OTEL_EXPORTER_MLFLOW_*`` settings too, so every variable of the project is read one way.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from typing import TypeVar

from opentelemetry.instrumentation.tensorboard.capture import warn_once

OTEL_PYTHON_TENSORBOARD_EXPORT_PROCESS = "OTEL_PYTHON_TENSORBOARD_EXPORT_PROCESS"
"""
.. envvar:: OTEL_PYTHON_TENSORBOARD_EXPORT_PROCESS

Whether the ``tensorboard`` configurator and ``tracelet.start_logging`` run push exporters
(``otlp``, ``mlflow``, ...) in a helper process beside the training process: ``true`` (default)
or ``false`` (also ``0``, ``no``, ``off``) to keep them in the training process.
"""

OTEL_PYTHON_TENSORBOARD_MAX_POINTS = "OTEL_PYTHON_TENSORBOARD_MAX_POINTS"
"""
.. envvar:: OTEL_PYTHON_TENSORBOARD_MAX_POINTS

Points of one series a reader keeps between two of its collections (default 1,000,000), so a
reader that never collects (a Prometheus endpoint nobody scrapes) does not hold points forever.
A positive whole number.
"""

OTEL_PYTHON_TENSORBOARD_SYSTEM_METRICS = "OTEL_PYTHON_TENSORBOARD_SYSTEM_METRICS"
"""
.. envvar:: OTEL_PYTHON_TENSORBOARD_SYSTEM_METRICS

Whether the ``tensorboard`` configurator also records process, host and GPU metrics
(:mod:`~opentelemetry.instrumentation.tensorboard.system_metrics`): ``false`` (default) or ``true``.
"""

OTEL_PYTHON_TENSORBOARD_SYSTEM_METRICS_INTERVAL = "OTEL_PYTHON_TENSORBOARD_SYSTEM_METRICS_INTERVAL"
"""
.. envvar:: OTEL_PYTHON_TENSORBOARD_SYSTEM_METRICS_INTERVAL

Seconds between two samples of the system metrics (default 10, as MLflow's own system metrics).
"""

OTEL_PYTHON_TENSORBOARD_JOURNAL_DIR = "OTEL_PYTHON_TENSORBOARD_JOURNAL_DIR"
"""
.. envvar:: OTEL_PYTHON_TENSORBOARD_JOURNAL_DIR

Where the ``tensorboard`` configurator's OTLP exporter keeps exports its destination has not
accepted yet (:mod:`~opentelemetry.instrumentation.tensorboard.durable_exporter`): one directory per
exporter below it (``<dir>/otlp``); default ``$XDG_CACHE_HOME/opentelemetry-tensorboard``
(``~/.cache/opentelemetry-tensorboard``). Every instrumented process exporting to the same
destination from this directory sends, first, what processes that ended left in it.
"""

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")

Number = TypeVar("Number", int, float)


def _unreadable(name: str, raw: str, expected: str, default: object) -> None:
    warn_once(f"env:{name}", "%s=%r is not %s; using the default, %r", name, raw, expected, default)


def read_flag(name: str, default: bool) -> bool:
    """``name`` as ``true``/``false`` (or ``1``/``0``, ``yes``/``no``, ``on``/``off``); unset or empty: ``default``."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    if raw.lower() in _TRUE:
        return True
    if raw.lower() in _FALSE:
        return False
    _unreadable(name, raw, "true or false", default)
    return default


def _read_positive(name: str, default: Number, parse: Callable[[str], Number], expected: str) -> Number:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = parse(raw)
    except ValueError:
        value = None
    if value is None or not 0 < value < math.inf:  # NaN fails this too
        _unreadable(name, raw, expected, default)
        return default
    return value


def read_positive_int(name: str, default: int) -> int:
    """``name`` as a positive whole number; unset or empty: ``default``."""
    return _read_positive(name, default, int, "a positive whole number")


def read_positive_float(name: str, default: float) -> float:
    """``name`` as a positive finite number; unset or empty: ``default``."""
    return _read_positive(name, default, float, "a positive number")


def read_text(name: str, *aliases: str) -> str | None:
    """The first of ``name`` and its ``aliases`` that is set and not blank, stripped; else ``None``.

    An alias is an older name kept working; ``name`` wins when both are set.
    """
    for variable in (name, *aliases):
        value = os.environ.get(variable, "").strip()
        if value:
            return value
    return None
