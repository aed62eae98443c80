"""Zero-code set-up: ``opentelemetry-instrument python train.py`` with every point kept.

The SDK's stock configurator builds the ``MeterProvider`` without Views and with the
``trace_based`` exemplar filter, so only the last value per collection would survive. This
configurator builds it with :func:`~opentelemetry.instrumentation.tensorboard.reservoir.views` and the
``always_on`` filter, and runs each push exporter chosen by ``OTEL_METRICS_EXPORTER`` (but the
console's) in a helper process (:mod:`~opentelemetry.instrumentation.tensorboard.export_process`),
collecting every 5 s unless ``OTEL_METRIC_EXPORT_INTERVAL`` says otherwise (what a killed
process can lose). In the helper the OTLP exporters run inside a
:class:`~opentelemetry.instrumentation.tensorboard.durable_exporter.DurableMetricExporter`, so an
export the collector does not accept in time waits on local disk instead of being dropped after
the SDK's 10 s of retries (not with ``OTEL_PYTHON_TENSORBOARD_EXPORT_PROCESS=false``: see there).
Everything else (traces, logs, resource) is the SDK's own. The distro selects it and sets defaults
fit for a training job.

Entry points: ``opentelemetry_distro`` and ``opentelemetry_configurator``, both ``tensorboard``.
When another distro is installed too (e.g. ``opentelemetry-distro``), choose this one with
``OTEL_PYTHON_DISTRO=tensorboard`` or at least ``OTEL_PYTHON_CONFIGURATOR=tensorboard``.
"""

from __future__ import annotations

import json
import os
import sys
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from opentelemetry.environment_variables import (
    OTEL_LOGS_EXPORTER,
    OTEL_METRICS_EXPORTER,
    OTEL_TRACES_EXPORTER,
)
from opentelemetry.instrumentation.distro import BaseDistro
from opentelemetry.instrumentation.environment_variables import (
    OTEL_PYTHON_CONFIGURATOR,
    OTEL_PYTHON_DISABLED_INSTRUMENTATIONS,
)
from opentelemetry.metrics import set_meter_provider
from opentelemetry.sdk.environment_variables import (
    OTEL_EXPERIMENTAL_RESOURCE_DETECTORS,
    OTEL_EXPORTER_PROMETHEUS_HOST,
    OTEL_EXPORTER_PROMETHEUS_PORT,
)
from opentelemetry.sdk.metrics import AlwaysOnExemplarFilter, MeterProvider
from opentelemetry.sdk.metrics.export import (
    ConsoleMetricExporter,
    MetricReader,
    MetricsData,
    PeriodicExportingMetricReader,
)

from opentelemetry.instrumentation.tensorboard import _sdk_compat, durable_exporter, export_process, system_metrics
from opentelemetry.instrumentation.tensorboard.reservoir import views


def meter_provider(readers: list[MetricReader], resource: Any = None, **kwargs: Any) -> MeterProvider:
    """A ``MeterProvider`` that keeps every TensorBoard point (Views plus ``always_on`` exemplars)."""
    return MeterProvider(
        metric_readers=readers,
        resource=resource,
        views=views(),
        exemplar_filter=AlwaysOnExemplarFilter(),
        **kwargs,
    )


def console_json(data: MetricsData) -> str:
    """The console exporter's JSON with each point's exemplars, which ``to_json`` leaves out."""
    document = json.loads(data.to_json(indent=None))
    for rm, rm_doc in zip(data.resource_metrics, document["resource_metrics"], strict=True):
        for sm, sm_doc in zip(rm.scope_metrics, rm_doc["scope_metrics"], strict=True):
            for metric, metric_doc in zip(sm.metrics, sm_doc["metrics"], strict=True):
                points = getattr(metric.data, "data_points", ())
                for point, point_doc in zip(points, metric_doc["data"]["data_points"], strict=True):
                    point_doc["exemplars"] = [
                        {
                            "value": e.value,
                            "time_unix_nano": e.time_unix_nano,
                            "filtered_attributes": dict(e.filtered_attributes or {}),
                        }
                        for e in point.exemplars or ()
                    ]
    return json.dumps(document) + os.linesep


def _init_metrics(
    exporters_or_readers: dict[str, type],
    resource: Any = None,
    exporter_args_map: dict | None = None,
    meter_configurator: Any = None,
) -> None:
    """The stock configurator's ``_init_metrics`` (same parameters), plus the Views, filter and export process."""
    readers: list[MetricReader] = []
    for name, cls in exporters_or_readers.items():
        args = (exporter_args_map or {}).get(cls, {})
        if cls is ConsoleMetricExporter:
            args = {"formatter": console_json, **args}
        if issubclass(cls, MetricReader):
            readers.append(prometheus_reader() if _is_prometheus(cls) else cls(**args))
            continue
        if cls is ConsoleMetricExporter or not export_process.enabled():
            readers.append(PeriodicExportingMetricReader(cls(**args)))
            continue
        # OTLP: journaled until the destination accepts (a collector outage), one directory for
        # ``otlp``, ``otlp_proto_http`` and ``otlp_proto_grpc``.
        journal_name = "otlp" if name.startswith("otlp") else name
        exporter = export_process.ProcessMetricExporter(*durable_exporter.in_export_process(cls, args, journal_name))
        interval = export_process.interval_millis()
        readers.append(PeriodicExportingMetricReader(exporter, export_interval_millis=interval))
    provider = meter_provider(readers, resource, **_sdk_compat.meter_configurator_option(meter_configurator))
    set_meter_provider(provider)
    if system_metrics.enabled():
        system_metrics.start(provider, readers)


PROMETHEUS_LABELS = frozenset({"mlflow.experiment.name", "mlflow.run.name", "distributed.rank"})
"""The resource attributes every Prometheus series carries as labels (``mlflow_experiment_name``,
``mlflow_run_name``, ``distributed_rank``), as the collector's prometheus exporter adds them
(``otel-collector.yaml``): they name the job's MLflow run and add no series, being fixed for the life
of the process. The rest of the resource is on ``target_info``."""


def _is_prometheus(reader_class: type) -> bool:
    return reader_class.__module__.split(".")[:3] == ["opentelemetry", "exporter", "prometheus"]


def prometheus_reader() -> MetricReader:
    """``OTEL_METRICS_EXPORTER=prometheus``: the SDK's reader, its series labelled with :data:`PROMETHEUS_LABELS`.

    The entry point's own reader takes no arguments, so it would keep the run on ``target_info``
    only. This one serves where that one does: ``OTEL_EXPORTER_PROMETHEUS_HOST`` (``localhost``) and
    ``OTEL_EXPORTER_PROMETHEUS_PORT`` (9464).
    """
    from opentelemetry.exporter.prometheus import PrometheusMetricReader  # noqa: PLC0415
    from prometheus_client import start_http_server  # noqa: PLC0415

    reader = PrometheusMetricReader(resource_attribute_filter=PROMETHEUS_LABELS.__contains__)
    start_http_server(
        port=int(os.environ.get(OTEL_EXPORTER_PROMETHEUS_PORT, "9464")),
        addr=os.environ.get(OTEL_EXPORTER_PROMETHEUS_HOST, "localhost"),
    )
    return reader


def default_service_name() -> str | None:
    """The script's name (``train`` for ``train.py``), a better default than ``unknown_service``."""
    if os.environ.get("OTEL_SERVICE_NAME") or "service.name=" in os.environ.get("OTEL_RESOURCE_ATTRIBUTES", ""):
        return None
    script = Path(sys.argv[0]).stem if sys.argv and sys.argv[0] not in ("", "-c", "-m") else ""
    return script or None


class TensorBoardConfigurator(_sdk_compat.sdk_configurator_class()):  # type: ignore[misc]
    """The SDK configurator, with a ``MeterProvider`` that keeps every point."""

    def _configure(self, **kwargs: Any) -> None:
        name = default_service_name()
        if name:
            kwargs.setdefault("resource_attributes", {}).setdefault("service.name", name)
        # The system-metrics instrumentation, installed, would be loaded next and sample at every
        # export (every 5 s by default); here it runs only through OTEL_PYTHON_TENSORBOARD_SYSTEM_METRICS,
        # once per interval (see system_metrics).
        disabled = [n.strip() for n in os.environ.get(OTEL_PYTHON_DISABLED_INSTRUMENTATIONS, "").split(",")]
        disabled = [name for name in disabled if name]
        if "system_metrics" not in disabled:
            os.environ[OTEL_PYTHON_DISABLED_INSTRUMENTATIONS] = ",".join([*disabled, "system_metrics"])
        with _sdk_compat.stock_metrics_replaced_by(_init_metrics):
            super()._configure(**kwargs)


class TensorBoardDistro(BaseDistro):
    """Defaults for a training job: metrics over OTLP, no traces or logs unless asked for."""

    def _configure(self, **kwargs: Any) -> None:
        os.environ.setdefault(OTEL_PYTHON_CONFIGURATOR, "tensorboard")
        os.environ.setdefault(OTEL_METRICS_EXPORTER, "otlp")
        # This project ships the OTLP/HTTP exporter; plain "otlp" would otherwise mean gRPC.
        if "OTEL_EXPORTER_OTLP_PROTOCOL" not in os.environ:
            os.environ.setdefault("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", "http/protobuf")
        os.environ.setdefault(OTEL_TRACES_EXPORTER, "none")
        os.environ.setdefault(OTEL_LOGS_EXPORTER, "none")
        os.environ.setdefault("OTEL_METRICS_EXEMPLAR_FILTER", "always_on")
        # Resource detectors other packages register for training jobs (e.g. the MLflow exporter's
        # run mapping) are switched on when installed.
        if OTEL_EXPERIMENTAL_RESOURCE_DETECTORS not in os.environ:
            names = {ep.name for ep in entry_points(group="opentelemetry_resource_detector")}
            extra = [name for name in ("mlflow",) if name in names]
            if extra:
                os.environ[OTEL_EXPERIMENTAL_RESOURCE_DETECTORS] = ",".join(extra)
