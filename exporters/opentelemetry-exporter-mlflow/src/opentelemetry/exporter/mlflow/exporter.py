"""The OpenTelemetry ``MetricExporter`` that writes every captured point into MLflow runs.

``export()`` maps the collection (:class:`~opentelemetry.exporter.mlflow.mapping.Mapper`) and
queues the rows; a :class:`~opentelemetry.exporter.mlflow.sender.Sender` thread delivers them, in
order, retrying while MLflow is unavailable, spooling to disk beyond ``max_queue_points``.
Shutdown ends the runs with the process's outcome (see
:mod:`~opentelemetry.instrumentation.tensorboard.lifecycle`) after at most ``export_timeout``
seconds of delivery (``KILLED_GRACE`` when the process is being killed).

Under the ``tensorboard`` configurator and ``tracelet.start_logging`` this exporter runs in a helper
process (:mod:`~opentelemetry.instrumentation.tensorboard.export_process`), so none of this work,
nor ``import mlflow``, happens in the training process.
"""

from __future__ import annotations

import atexit
import importlib.util
import logging
import os
import uuid
import weakref
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from opentelemetry.sdk.metrics import (
    Counter,
    Histogram,
    ObservableCounter,
    ObservableGauge,
    ObservableUpDownCounter,
    UpDownCounter,
)
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    MetricExporter,
    MetricExportResult,
    MetricsData,
)

from opentelemetry.exporter.mlflow.environment_variables import (
    OTEL_EXPORTER_MLFLOW_EXPORT_TIMEOUT,
    OTEL_EXPORTER_MLFLOW_HANDLE_PROCESS_EXIT,
    OTEL_EXPORTER_MLFLOW_MAX_QUEUE_POINTS,
    OTEL_EXPORTER_MLFLOW_SCHEDULE_DELAY,
    OTEL_EXPORTER_MLFLOW_TIMEOUT,
)
from opentelemetry.exporter.mlflow.mapping import SOURCE_TYPE, Mapper
from opentelemetry.exporter.mlflow.reporting import ReportOnce
from opentelemetry.exporter.mlflow.resource import source_attributes
from opentelemetry.exporter.mlflow.sender import Sender
from opentelemetry.exporter.mlflow.spool import default_spool_dir
from opentelemetry.exporter.mlflow.tracking_uri import check_tracking_uri, default_tracking_uri
from opentelemetry.instrumentation.tensorboard import lifecycle
from opentelemetry.instrumentation.tensorboard._sdk_compat import SdkGauge
from opentelemetry.instrumentation.tensorboard.environment_variables import (
    read_flag,
    read_positive_float,
    read_positive_int,
)
from opentelemetry.instrumentation.tensorboard.export_process import KILLED_GRACE, report_forked

_logger = logging.getLogger(__name__)

MAX_QUEUE_POINTS = 200_000  # the defaults of the arguments and variables of the same names
EXPORT_TIMEOUT = 30.0  # seconds
REQUEST_TIMEOUT = 10.0  # seconds
SCHEDULE_DELAY = 5.0  # seconds

_DELTA = {
    kind: AggregationTemporality.DELTA
    for kind in (
        Counter,
        UpDownCounter,
        Histogram,
        ObservableCounter,
        ObservableUpDownCounter,
        ObservableGauge,
        SdkGauge,
    )
}


def _source_tags() -> dict[str, str]:
    """The tags MLflow's own client puts on a run it creates, for resources that do not carry them.

    The export process runs with the training process's ``sys.argv``, so the source is the script.
    """
    return {SOURCE_TYPE: "LOCAL", **source_attributes()}


class MlflowMetricExporter(MetricExporter):
    """Writes TensorBoard points captured by OpenTelemetry into MLflow runs, each exactly once.

    Each argument not given is read from the environment (:mod:`.environment_variables`), so a
    zero-code job can set what code can.

    Args:
        tracking_uri: MLflow tracking URI; default ``MLFLOW_TRACKING_URI``, else
            ``sqlite:///mlflow.db`` in the working directory (MLflow 3's default).
        experiment_name: experiment for points whose resource names none; default
            ``MLFLOW_EXPERIMENT_NAME``.
        run_id: existing run to write into; default ``MLFLOW_RUN_ID``.
        spool_dir: where undeliverable points wait on disk; default ``OTEL_EXPORTER_MLFLOW_SPOOL_DIR``
            (or its alias ``TRACELET_SPOOL_DIR``), else ``~/.cache/tracelet/spool``.
        max_queue_points: points kept in memory before the oldest go to the spool; default
            ``OTEL_EXPORTER_MLFLOW_MAX_QUEUE_POINTS``, else 200,000.
        export_timeout: seconds shutdown waits for delivery before spooling the rest; default
            ``OTEL_EXPORTER_MLFLOW_EXPORT_TIMEOUT`` (milliseconds), else 30.
        request_timeout: seconds one MLflow request may take before it is retried; default
            ``OTEL_EXPORTER_MLFLOW_TIMEOUT`` (milliseconds), else 10.
        experiment_id: experiment (by id) when neither the resource nor ``experiment_name`` names
            one; default ``MLFLOW_EXPERIMENT_ID``, else MLflow's default experiment.
        schedule_delay: seconds between two sends of a request that is not full; default
            ``OTEL_EXPORTER_MLFLOW_SCHEDULE_DELAY`` (milliseconds), else 5. Exports may come far more
            often (a helper process takes one every half second, so that a killed training process
            loses little) without multiplying MLflow's requests: the points are in the journal
            already, and a full request goes at once.
        handle_process_exit: chain ``sys.excepthook`` (FAILED) and handle SIGTERM (KILLED); default
            ``OTEL_EXPORTER_MLFLOW_HANDLE_PROCESS_EXIT``, else true.
    """

    def __init__(
        self,
        tracking_uri: str | None = None,
        experiment_name: str | None = None,
        run_id: str | None = None,
        spool_dir: str | os.PathLike[str] | None = None,
        max_queue_points: int | None = None,
        export_timeout: float | None = None,
        request_timeout: float | None = None,
        experiment_id: str | None = None,
        handle_process_exit: bool | None = None,
        preferred_aggregation: dict | None = None,
        schedule_delay: float | None = None,
    ) -> None:
        super().__init__(preferred_temporality=dict(_DELTA), preferred_aggregation=preferred_aggregation)
        if max_queue_points is None:
            max_queue_points = read_positive_int(OTEL_EXPORTER_MLFLOW_MAX_QUEUE_POINTS, MAX_QUEUE_POINTS)
        if export_timeout is None:
            export_timeout = read_positive_float(OTEL_EXPORTER_MLFLOW_EXPORT_TIMEOUT, EXPORT_TIMEOUT * 1000) / 1000
        if request_timeout is None:
            request_timeout = read_positive_float(OTEL_EXPORTER_MLFLOW_TIMEOUT, REQUEST_TIMEOUT * 1000) / 1000
        if schedule_delay is None:
            schedule_delay = read_positive_float(OTEL_EXPORTER_MLFLOW_SCHEDULE_DELAY, SCHEDULE_DELAY * 1000) / 1000
        if handle_process_exit is None:
            handle_process_exit = read_flag(OTEL_EXPORTER_MLFLOW_HANDLE_PROCESS_EXIT, True)
        if isinstance(max_queue_points, bool) or not isinstance(max_queue_points, int) or max_queue_points < 1:
            raise ValueError(f"max_queue_points must be a positive integer, got {max_queue_points!r}")
        for name, value in (
            ("export_timeout", export_timeout),
            ("request_timeout", request_timeout),
            ("schedule_delay", schedule_delay),
        ):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")
        self.tracking_uri = check_tracking_uri(tracking_uri or default_tracking_uri())
        if urlsplit(self.tracking_uri).scheme not in ("http", "https") and not (
            importlib.util.find_spec("sqlalchemy") and importlib.util.find_spec("mlflow")
        ):
            raise ValueError(
                f"tracking_uri {self.tracking_uri!r} needs the full mlflow package "
                "(pip install 'opentelemetry-exporter-mlflow[embedded]'); or use an http(s):// tracking server"
            )
        self.experiment_id = experiment_id or os.environ.get("MLFLOW_EXPERIMENT_ID") or None
        self.run_id = run_id or os.environ.get("MLFLOW_RUN_ID") or None
        self.spool_dir = Path(spool_dir).expanduser() if spool_dir else default_spool_dir()
        self.max_queue_points = max_queue_points
        self.export_timeout = float(export_timeout)
        self.request_timeout = float(request_timeout)
        self.schedule_delay = float(schedule_delay)
        self.experiment_name = experiment_name or os.environ.get("MLFLOW_EXPERIMENT_NAME") or None
        self._pid = os.getpid()
        self._mapper = Mapper(self.experiment_name)
        self._sender = Sender(
            self.tracking_uri,
            self.spool_dir,
            experiment_id=self.experiment_id,
            run_id=self.run_id,
            instance=str(uuid.uuid4()),
            source_tags=_source_tags(),
            max_queue_points=max_queue_points,
            request_timeout=self.request_timeout,
            schedule_delay=self.schedule_delay,
        )
        self._closed = False
        self._report = ReportOnce(_logger)

        if handle_process_exit:
            lifecycle.install()
        backstop = weakref.WeakMethod(self._at_exit)
        atexit.register(lambda: (method := backstop()) and method())

    @property
    def delivered_points(self) -> int:
        """Points MLflow has taken so far."""
        return self._sender.delivered_points

    # MetricExporter -----------------------------------------------------------------------------

    def export(self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any) -> MetricExportResult:
        """Maps and queues; never waits for MLflow."""
        if os.getpid() != self._pid:
            report_forked(metrics_data, self._pid)  # never the parent's runs, points or status
            return MetricExportResult.SUCCESS
        if self._closed:
            return MetricExportResult.FAILURE
        try:
            batches = self._mapper.from_sdk(metrics_data)
        except Exception as exc:  # noqa: BLE001 - one bad collection must not stop the next ones
            self._report("map", "MLflow exporter: a collection could not be mapped and is skipped (%r)", exc)
            return MetricExportResult.FAILURE
        if batches:
            self._sender.submit(batches)
        return MetricExportResult.SUCCESS

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        """Waits until everything queued so far is in MLflow; ``False`` if not within the timeout."""
        if os.getpid() != self._pid:
            return True
        return self._sender.flush(timeout_millis / 1000)

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        """Delivers for at most ``export_timeout`` seconds, spools the rest, ends the runs with the process's end."""
        if os.getpid() != self._pid or self._closed:
            return
        self._closed = True
        timeout = min(self.export_timeout, float(kwargs.get("timeout", timeout_millis)) / 1000)
        if lifecycle.killed():
            timeout = min(timeout, KILLED_GRACE)
        with lifecycle.flushing():
            self._sender.shutdown(lifecycle.outcome(), max(timeout, 0.0))

    def _at_exit(self) -> None:
        """Backstop for a provider that is never shut down."""
        if os.getpid() == self._pid and not self._closed and self._sender.started:
            self.shutdown()
