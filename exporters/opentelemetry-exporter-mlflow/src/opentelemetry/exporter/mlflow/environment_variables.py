"""The ``OTEL_EXPORTER_MLFLOW_*`` settings of the MLflow exporter.

Each one stands for an argument of :class:`~opentelemetry.exporter.mlflow.MlflowMetricExporter`
and is read when the argument is not given, so a zero-code job (``OTEL_METRICS_EXPORTER=mlflow
opentelemetry-instrument python train.py``) can set everything code can. Timeouts are in
milliseconds, as every ``OTEL_*_TIMEOUT`` is. A value that cannot be read is reported once, naming
the variable, and the default applies. Where the tracking server is and which run or experiment
to write into are MLflow's own variables (``MLFLOW_TRACKING_URI``, ``MLFLOW_EXPERIMENT_NAME``,
``MLFLOW_EXPERIMENT_ID``, ``MLFLOW_RUN_ID``), read as MLflow reads them.

tracelet's names (``TRACELET_*``) are read too, as aliases (:data:`ALIASES`): here, the one place
that knows them, so nothing else in the exporter does.
"""

from __future__ import annotations

from opentelemetry.instrumentation.tensorboard.environment_variables import read_text

OTEL_EXPORTER_MLFLOW_SPOOL_DIR = "OTEL_EXPORTER_MLFLOW_SPOOL_DIR"
"""
.. envvar:: OTEL_EXPORTER_MLFLOW_SPOOL_DIR

Where points MLflow could not take yet wait on disk (``spool_dir``); default
``$XDG_CACHE_HOME/tracelet/spool`` (``~/.cache/tracelet/spool``). ``TRACELET_SPOOL_DIR``, tracelet's
name for the same directory, is an alias (:data:`SPOOL_DIR_ALIAS`); this name wins when both are set.
"""

SPOOL_DIR_ALIAS = "TRACELET_SPOOL_DIR"
"""tracelet's name for :data:`OTEL_EXPORTER_MLFLOW_SPOOL_DIR`, read too, so job scripts that set it keep working."""

ALIASES: dict[str, tuple[str, ...]] = {OTEL_EXPORTER_MLFLOW_SPOOL_DIR: (SPOOL_DIR_ALIAS,)}
"""Other names each variable is read under, after its own (which wins when both are set)."""

OTEL_EXPORTER_MLFLOW_MAX_QUEUE_POINTS = "OTEL_EXPORTER_MLFLOW_MAX_QUEUE_POINTS"
"""
.. envvar:: OTEL_EXPORTER_MLFLOW_MAX_QUEUE_POINTS

Points kept in memory before the oldest go to the spool (``max_queue_points``); default 200,000.
"""

OTEL_EXPORTER_MLFLOW_EXPORT_TIMEOUT = "OTEL_EXPORTER_MLFLOW_EXPORT_TIMEOUT"
"""
.. envvar:: OTEL_EXPORTER_MLFLOW_EXPORT_TIMEOUT

Milliseconds shutdown waits for delivery before it spools the rest (``export_timeout``, in
seconds in code); default 30,000.
"""

OTEL_EXPORTER_MLFLOW_TIMEOUT = "OTEL_EXPORTER_MLFLOW_TIMEOUT"
"""
.. envvar:: OTEL_EXPORTER_MLFLOW_TIMEOUT

Milliseconds one MLflow request may take before it is retried (``request_timeout``, in seconds
in code); default 10,000, as ``OTEL_EXPORTER_OTLP_TIMEOUT``.
"""

OTEL_EXPORTER_MLFLOW_SCHEDULE_DELAY = "OTEL_EXPORTER_MLFLOW_SCHEDULE_DELAY"
"""
.. envvar:: OTEL_EXPORTER_MLFLOW_SCHEDULE_DELAY

Milliseconds between two sends of a request that is not full (``schedule_delay``, in seconds in
code); default 5,000, as ``OTEL_BSP_SCHEDULE_DELAY`` is for spans. A request's worth of points
(1,000) goes at once, as does everything at a flush or shutdown.
"""

OTEL_EXPORTER_MLFLOW_HANDLE_PROCESS_EXIT = "OTEL_EXPORTER_MLFLOW_HANDLE_PROCESS_EXIT"
"""
.. envvar:: OTEL_EXPORTER_MLFLOW_HANDLE_PROCESS_EXIT

Whether the exporter chains ``sys.excepthook`` (runs end FAILED on an uncaught exception) and
handles SIGTERM (runs end KILLED) (``handle_process_exit``): ``true`` (default) or ``false``, for a
process whose framework owns those hooks.
"""


def read_spool_dir() -> str | None:
    """:data:`OTEL_EXPORTER_MLFLOW_SPOOL_DIR`, else its aliases; ``None`` when none is set (blank counts as unset)."""
    return read_text(OTEL_EXPORTER_MLFLOW_SPOOL_DIR, *ALIASES[OTEL_EXPORTER_MLFLOW_SPOOL_DIR])
