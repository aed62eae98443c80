"""Every use of the OpenTelemetry SDK's private names, in one module.

Lossless capture needs a few things the SDK's public API does not offer: a measurement with the
value and time as given (the API's ``set`` drops NaN and stamps the collection time), the
provider's Views and resource, an exporter's preferred temporality (and an OTLP exporter's
resolved endpoint), a hook into the stock
configurator's ``MeterProvider``, and silence for one warning that does not apply. Each function
below does one of them and says why. No other module of this project touches SDK internals, so an
SDK release that moves one of them breaks here only, and ``tests/instrumentation/test_sdk_compat.py``
(run against the lowest and the newest supported ``opentelemetry-sdk`` by
``scripts/test-sdk-versions.sh``) fails naming the version before users see a silent fallback.

:data:`SUPPORTED` are the versions those tests run against; the packages' ``opentelemetry-sdk`` pin
is ``>= SUPPORTED[0], < `` the minor after ``SUPPORTED[-1]``. Where an internal is missing at run
time anyway, the functions raise :class:`UnsupportedSdkError` (whose message names the installed
version) or say they cannot tell, as each docstring states; none falls back silently.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from opentelemetry.context import Context
from opentelemetry.metrics import _Gauge as ApiGauge
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics import _Gauge as SdkGauge
from opentelemetry.sdk.metrics.export import MetricExporter
from opentelemetry.sdk.metrics.view import View
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.version import __version__ as SDK_VERSION  # noqa: N812

__all__ = [
    "SDK_VERSION",
    "SUPPORTED",
    "ApiGauge",
    "SdkGauge",
    "UnsupportedSdkError",
    "exporter_preferences",
    "is_view_conflict",
    "measurement_sink",
    "meter_configurator_option",
    "provider_resource",
    "provider_views",
    "quiet_view_conflicts",
    "sdk_configurator_class",
    "stock_metrics_replaced_by",
]

SUPPORTED = ("1.41.0", "1.45.2")
"""The lowest and the newest ``opentelemetry-sdk`` the compat tests run against."""

Measure = Callable[[float, int, Mapping[str, Any], Context], None]

# The SDK logger and message of the warning :func:`quiet_view_conflicts` drops.
VIEW_CONFLICT_LOGGER = "opentelemetry.sdk.metrics._internal.metric_reader_storage"
VIEW_CONFLICT_MESSAGE = "Views %s and %s will cause conflicting"


class UnsupportedSdkError(RuntimeError):
    """The installed ``opentelemetry-sdk`` no longer has an internal this package relies on."""

    def __init__(self, what: str) -> None:
        super().__init__(
            f"opentelemetry-sdk {SDK_VERSION} changed {what}; this package is tested with opentelemetry-sdk "
            f"{SUPPORTED[0]} to {SUPPORTED[-1]} (install one of those, or a newer release of this package)"
        )


def measurement_sink(instrument: Any) -> Measure | None:
    """A function that hands one measurement to the SDK behind ``instrument``, value and time as given.

    Why: the API's ``Gauge.set`` drops NaN and infinities (a NaN loss is the point a user most needs
    to see) and stamps the current time, while the last value of a series should carry the wall time
    TensorBoard wrote. The SDK's instruments pass a ``Measurement`` to their measurement consumer;
    building one ourselves keeps both. ``instrument`` may be the API's proxy (a meter taken before
    the provider was set), whose real instrument is behind it.

    Returns ``None`` for an instrument that is not the SDK's (another MeterProvider, or the proxy
    before a provider exists): the caller then uses ``set``. Raises :class:`UnsupportedSdkError` for
    an SDK instrument without a measurement consumer.
    """
    real = getattr(instrument, "_real_instrument", None) or instrument
    consumer = getattr(real, "_measurement_consumer", None)
    if consumer is None:
        if type(real).__module__.startswith("opentelemetry.sdk."):
            raise UnsupportedSdkError("its instruments' _measurement_consumer (NaN last values cannot be recorded)")
        return None
    from opentelemetry.sdk.metrics._internal.measurement import Measurement  # noqa: PLC0415 - only once an SDK runs

    consume = consumer.consume_measurement

    def measure(value: float, time_unix_nano: int, attributes: Mapping[str, Any], context: Context) -> None:
        consume(
            Measurement(
                value=value, time_unix_nano=time_unix_nano, instrument=real, context=context, attributes=attributes
            )
        )

    return measure


def provider_views(provider: MeterProvider) -> Sequence[View] | None:
    """The Views an SDK ``MeterProvider`` was built with; ``None`` when this SDK no longer says.

    Why: the instrumentor warns when a provider lacks the tensorboard View (only last values would
    survive), and the provider keeps its Views in its private configuration only.
    """
    config = getattr(provider, "_sdk_config", None)
    views = getattr(config, "views", None)
    return None if views is None else tuple(views)


def provider_resource(provider: MeterProvider) -> Resource | None:
    """The resource of an SDK ``MeterProvider``; ``None`` when this SDK no longer says.

    Why: under ``opentelemetry-instrument`` the run's identity (experiment, run name) is in the
    resource of a provider built elsewhere, and the provider keeps it in its private configuration only.
    """
    resource = getattr(getattr(provider, "_sdk_config", None), "resource", None)
    return resource if isinstance(resource, Resource) else None


def exporter_preferences(exporter: MetricExporter) -> tuple[dict[type, Any], dict[type, Any]]:
    """An exporter's preferred temporality and aggregation, as its reader reads them.

    Why: an exporter that stands in for another (the export process's) must make its reader collect
    what the real exporter wants (the MLflow exporter wants DELTA); the SDK's readers read these
    private attributes off any exporter and there is no public getter. Raises
    :class:`UnsupportedSdkError` when they are gone: collecting with the wrong temporality would
    send every point again at each export.
    """
    try:
        return exporter._preferred_temporality, exporter._preferred_aggregation
    except AttributeError:
        raise UnsupportedSdkError("MetricExporter._preferred_temporality/_preferred_aggregation") from None


def exporter_endpoint(exporter: MetricExporter) -> str | None:
    """Where an OTLP exporter sends, as it resolved it (argument, ``OTEL_EXPORTER_OTLP_*``, default).

    The OTLP exporters keep it only in ``_endpoint``. The durable exporter records it in each
    journal so that what a dead process kept is only ever sent where it was meant to go. ``None``
    for an exporter without one (then only its arguments tell destinations apart).
    """
    endpoint = getattr(exporter, "_endpoint", None)
    return str(endpoint) if endpoint else None


def sdk_configurator_class() -> type:
    """The SDK's stock configurator class, which the ``tensorboard`` configurator extends.

    Why: ``opentelemetry-instrument`` runs a configurator chosen by name; extending the stock one
    keeps traces, logs, resource and exporter lookup exactly the SDK's own.
    """
    from opentelemetry.sdk import _configuration  # noqa: PLC0415 - only the configurator needs it

    stock = getattr(_configuration, "_OTelSDKConfigurator", None)
    if not isinstance(stock, type):
        raise UnsupportedSdkError("opentelemetry.sdk._configuration._OTelSDKConfigurator")
    return stock


@contextmanager
def stock_metrics_replaced_by(init_metrics: Callable[..., None]) -> Iterator[None]:
    """While inside, the stock configurator builds the ``MeterProvider`` with ``init_metrics``.

    Why: the stock configurator builds the provider in its private ``_init_metrics`` (called with the
    keywords ``exporters_or_readers``, ``resource``, ``exporter_args_map``, ``meter_configurator``),
    with no way to add Views or an exemplar filter; replacing that one function for the duration of
    the configuration keeps everything else the SDK's. With ``OTEL_CONFIG_FILE`` (SDK 1.43 and later)
    the SDK builds everything from the file instead and ``init_metrics`` is not called: the
    instrumentor then warns that the provider has no tensorboard View.
    """
    from opentelemetry.sdk import _configuration  # noqa: PLC0415 - only the configurator needs it

    stock = getattr(_configuration, "_init_metrics", None)
    if stock is None:
        raise UnsupportedSdkError("opentelemetry.sdk._configuration._init_metrics")
    _configuration._init_metrics = init_metrics
    try:
        yield
    finally:
        _configuration._init_metrics = stock


def meter_configurator_option(meter_configurator: Any) -> dict[str, Any]:
    """The ``MeterProvider`` keyword that carries the stock configurator's meter configurator.

    Why: the SDK hands the meter configurator (``OTEL_PYTHON_METER_CONFIGURATOR``) to its provider
    through a private keyword; a replacement for its ``_init_metrics`` must pass it on. Empty when
    there is none, so a provider is built with public arguments only.
    """
    return {} if meter_configurator is None else {"_meter_configurator": meter_configurator}


def is_view_conflict(record: logging.LogRecord, view_type: type[View]) -> bool:
    """Whether ``record`` is the SDK's conflicting-Views warning about two Views of ``view_type``."""
    args = record.args if isinstance(record.args, tuple) else ()
    return (
        record.name == VIEW_CONFLICT_LOGGER
        and str(record.msg).startswith(VIEW_CONFLICT_MESSAGE)
        and bool(args)
        and all(isinstance(view, view_type) for view in args)
    )


class _DropViewConflicts(logging.Filter):
    def __init__(self, view_type: type[View]) -> None:
        super().__init__()
        self.view_type = view_type

    def filter(self, record: logging.LogRecord) -> bool:
        return not is_view_conflict(record, self.view_type)


def quiet_view_conflicts(view_type: type[View]) -> None:
    """Drops the SDK's warning that one View of ``view_type`` matches an instrument in two meters (once per type).

    Why: the SDK compares metric stream names across instrumentation scopes and warns when the
    tensorboard View matches ``tensorboard.scalar`` both in tracelet's meter and in the TensorBoard
    instrumentation's; the scopes keep the streams apart and every exporter reads both, so the
    warning is noise. The SDK has no setting for it; its logger and message text are all there is.
    """
    logger = logging.getLogger(VIEW_CONFLICT_LOGGER)
    if not any(isinstance(f, _DropViewConflicts) and f.view_type is view_type for f in logger.filters):
        logger.addFilter(_DropViewConflicts(view_type))
