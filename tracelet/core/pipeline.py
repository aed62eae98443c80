"""The OpenTelemetry pipeline behind an experiment: resource, readers per backend, MeterProvider.

The run identity travels in the resource (``mlflow.experiment.name`` = project, ``mlflow.run.name``
= exp_name, ``service.instance.id`` new per experiment, ``distributed.rank``), not in the exporter's
arguments, so the points land in the same run whether the MLflow exporter writes them directly or
they travel over OTLP through a collector to tracelet's receiver.
"""

from __future__ import annotations

import errno
import logging
import os
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from opentelemetry.metrics import get_meter_provider
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricExporter, MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource

from opentelemetry.exporter.mlflow.mapping import (
    EXPERIMENT_NAME,
    INSTANCE_ID,
    RANK,
    RUN_ID,
    RUN_NAME,
    SERVICE_NAME,
    WORLD_SIZE,
)
from opentelemetry.exporter.mlflow.resource import MlflowResourceDetector
from opentelemetry.instrumentation.tensorboard import (
    TensorBoardInstrumentor,
    _sdk_compat,
    durable_exporter,
    export_process,
    system_metrics,
)
from opentelemetry.instrumentation.tensorboard.configurator import (
    PROMETHEUS_LABELS,
    console_json,
    default_service_name,
    meter_provider,
)
from opentelemetry.instrumentation.tensorboard.export_process import ProcessMetricExporter
from opentelemetry.instrumentation.tensorboard.reservoir import has_views
from tracelet.settings import TraceletSettings

_logger = logging.getLogger(__name__)


@dataclass
class Pipeline:
    """A MeterProvider and what must be closed with it; ``owned`` is False for one that is borrowed."""

    provider: MeterProvider = None  # type: ignore[assignment]  # set once the readers exist
    owned: bool = True
    closers: list[Callable[[], None]] = field(default_factory=list)
    prometheus_url: str | None = None
    tracking_uri: str | None = None  # where the mlflow backend writes

    @property
    def resource(self) -> dict[str, Any]:
        resource = _sdk_compat.provider_resource(self.provider)
        return dict(resource.attributes) if resource is not None else {}

    def close(self, timeout_millis: float = 20_000) -> None:
        """Exports what is left; shuts an owned provider down (the MLflow exporter then ends the run).

        Flush and shutdown share one budget, so the whole close fits a 30 s grace period (SIGTERM
        before SIGKILL on Kubernetes and Slurm) with room to spare; what is not delivered by then is
        spooled by the exporter.
        """
        deadline = time.monotonic() + timeout_millis / 1000
        try:
            self.provider.force_flush(timeout_millis)
        finally:
            if self.owned:
                self.provider.shutdown(max(1_000.0, (deadline - time.monotonic()) * 1000))
            for close in self.closers:
                close()


def rank() -> tuple[int | None, int | None]:
    """This process's rank and world size: ``RANK``/``WORLD_SIZE`` (torchrun) or torch.distributed."""
    value, world = _env_int("RANK"), _env_int("WORLD_SIZE")
    if value is not None:
        return value, world
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return None, world


def _env_int(name: str) -> int | None:
    try:
        return int(os.environ[name])
    except (KeyError, ValueError):
        return None


def resource(settings: TraceletSettings) -> Resource:
    """The run identity; ``OTEL_RESOURCE_ATTRIBUTES`` and ``MLFLOW_EXPERIMENT_NAME``/``MLFLOW_RUN_ID`` fill gaps."""
    attributes: dict[str, Any] = {INSTANCE_ID: uuid.uuid4().hex}
    service = default_service_name()
    if service:
        attributes[SERVICE_NAME] = service
    for attribute, value in (
        (EXPERIMENT_NAME, settings.project),
        (RUN_NAME, settings.exp_name),
        (RUN_ID, settings.run_id),
    ):
        if value:
            attributes[attribute] = value
    process_rank, world = rank()
    if process_rank is not None:
        attributes[RANK] = process_rank
    if world is not None:
        attributes[WORLD_SIZE] = world
    return MlflowResourceDetector().detect().merge(Resource.create(attributes))


def borrowed_provider() -> MeterProvider | None:
    """The provider ``opentelemetry-instrument`` set up for TensorBoard capture, if this process runs under it.

    Its configurator sets a global MeterProvider with the tensorboard Views and instruments
    TensorBoard with it; building a second pipeline would capture every point twice.
    """
    provider = get_meter_provider()
    if not isinstance(provider, MeterProvider):
        if TensorBoardInstrumentor().is_instrumented_by_opentelemetry:
            _logger.warning(
                "tracelet: TensorBoard is already instrumented by other code with a MeterProvider tracelet cannot "
                "reach; its points go where that code sends them, the experiment's own metrics where tracelet does"
            )
        return None
    if has_views(provider) or TensorBoardInstrumentor().is_instrumented_by_opentelemetry:
        return provider
    return None


def build(settings: TraceletSettings) -> Pipeline:
    """A new provider with one reader per backend (never set as the global one), plus the system metrics if asked."""
    pipeline = Pipeline()
    readers: list[MetricReader] = []
    try:
        for backend in settings.backend:
            readers.append(_READERS[backend](settings, pipeline))
    except BaseException:
        for reader in readers:
            reader.shutdown()
        for close in pipeline.closers:
            close()
        raise
    # tracelet's own atexit handler shuts the provider down, after draining the captured points.
    pipeline.provider = meter_provider(readers, resource(settings), shutdown_on_exit=False)
    if settings.system_metrics:
        try:
            sampled = system_metrics.start(pipeline.provider, readers, settings.system_metrics_interval)
        except BaseException:
            pipeline.provider.shutdown()
            for close in pipeline.closers:
                close()
            raise
        pipeline.closers.append(sampled.stop)  # after the provider's last collection
    return pipeline


IN_PROCESS_INTERVAL = 5.0  # seconds between exports of exporters in this process, unless configured


def _interval_ms(settings: TraceletSettings, exporter: MetricExporter | None = None) -> float:
    """The export interval: the configured one, else a short hand-off to a helper process, else 5 s."""
    if settings.export_interval is not None:
        return settings.export_interval * 1000
    in_helper = isinstance(exporter, ProcessMetricExporter)
    return (export_process.HANDOFF_INTERVAL if in_helper else IN_PROCESS_INTERVAL) * 1000


def _pushed(exporter_class: type[MetricExporter], **kwargs: Any) -> tuple[MetricExporter, MetricExporter]:
    """The exporter to read into (in a helper process, see ``export_process``) and the one made in this process."""
    if not export_process.enabled():
        exporter = exporter_class(**kwargs)
        return exporter, exporter
    # OTLP exporters run inside the durable exporter, as under the configurator (collector outages).
    wrapped = ProcessMetricExporter(*durable_exporter.in_export_process(exporter_class, kwargs, "otlp"))
    return wrapped, wrapped.exporter


def _mlflow(settings: TraceletSettings, pipeline: Pipeline) -> MetricReader:
    from opentelemetry.exporter.mlflow import MlflowMetricExporter  # noqa: PLC0415

    exporter, local = _pushed(
        MlflowMetricExporter,
        tracking_uri=settings.tracking_uri,
        experiment_name=settings.project,
        run_id=settings.run_id,
        spool_dir=settings.spool_dir,
    )
    pipeline.tracking_uri = local.tracking_uri  # type: ignore[attr-defined]
    return PeriodicExportingMetricReader(exporter, export_interval_millis=_interval_ms(settings, exporter))


def otlp_url(endpoint: str | None) -> str | None:
    """The metrics URL for an OTLP/HTTP base endpoint (``http://host:4318`` -> ``.../v1/metrics``)."""
    if not endpoint:
        return None
    endpoint = endpoint.rstrip("/")
    return endpoint if endpoint.endswith("/v1/metrics") else f"{endpoint}/v1/metrics"


def _otlp(settings: TraceletSettings, _pipeline: Pipeline) -> MetricReader:
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter  # noqa: PLC0415

    exporter, _ = _pushed(OTLPMetricExporter, endpoint=otlp_url(settings.otlp_endpoint))
    return PeriodicExportingMetricReader(exporter, export_interval_millis=_interval_ms(settings, exporter))


def _prometheus(settings: TraceletSettings, pipeline: Pipeline) -> MetricReader:
    from opentelemetry.exporter.prometheus import PrometheusMetricReader  # noqa: PLC0415
    from prometheus_client import CollectorRegistry, start_http_server  # noqa: PLC0415

    # A registry of its own: several experiments in one process do not meet in the global one.
    registry = CollectorRegistry()
    reader = PrometheusMetricReader(registry=registry, resource_attribute_filter=PROMETHEUS_LABELS.__contains__)
    port = settings.prometheus_port
    try:
        server, thread = start_http_server(port, addr="127.0.0.1", registry=registry)
    except OSError as exc:
        if exc.errno != errno.EADDRINUSE:
            raise
        server, thread = start_http_server(0, addr="127.0.0.1", registry=registry)
        _logger.warning(
            "tracelet: port %d is in use; Prometheus metrics are served on http://127.0.0.1:%d/metrics instead "
            "(set prometheus_port or TRACELET_PROMETHEUS_PORT)",
            port,
            server.server_port,
        )
    else:
        _logger.info("tracelet: Prometheus metrics on http://127.0.0.1:%d/metrics", server.server_port)
    pipeline.prometheus_url = f"http://127.0.0.1:{server.server_port}/metrics"

    def close() -> None:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)

    pipeline.closers.append(close)
    return reader


def _console(settings: TraceletSettings, _pipeline: Pipeline) -> MetricReader:
    from opentelemetry.sdk.metrics.export import ConsoleMetricExporter  # noqa: PLC0415

    # One JSON document per export, each point with its exemplars (every captured step).
    exporter = ConsoleMetricExporter(formatter=console_json)
    return PeriodicExportingMetricReader(exporter, export_interval_millis=_interval_ms(settings))


_READERS: dict[str, Callable[[TraceletSettings, Pipeline], MetricReader]] = {
    "mlflow": _mlflow,
    "otlp": _otlp,
    "prometheus": _prometheus,
    "console": _console,
}
