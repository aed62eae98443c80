"""The OpenTelemetry SDK internals that ``_sdk_compat`` relies on, checked against the installed SDK.

``scripts/test-sdk-versions.sh`` runs this file against the lowest and the newest supported
``opentelemetry-sdk`` (``_sdk_compat.SUPPORTED``); the suite runs it against the installed one.
Every failure names the SDK version, so a release that moves an internal is caught here rather
than by a user whose NaN losses or step times silently go missing.
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import math
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import tomllib
from opentelemetry.context import get_current
from opentelemetry.instrumentation.instrumentor import BaseInstrumentor
from opentelemetry.sdk.metrics import Exemplar, ExemplarReservoir, MeterProvider
from opentelemetry.sdk.metrics.export import AggregationTemporality, ConsoleMetricExporter, InMemoryMetricReader
from opentelemetry.sdk.metrics.view import LastValueAggregation, View
from opentelemetry.sdk.resources import Resource

from opentelemetry.instrumentation.tensorboard import _sdk_compat, configurator
from opentelemetry.instrumentation.tensorboard.configurator import meter_provider
from opentelemetry.instrumentation.tensorboard.reservoir import TensorBoardView, has_views

SDK = f"opentelemetry-sdk {_sdk_compat.SDK_VERSION}"
ROOT = Path(__file__).resolve().parents[2]
PYPROJECTS = [
    ROOT / "instrumentation" / "opentelemetry-instrumentation-tensorboard" / "pyproject.toml",
    ROOT / "exporters" / "opentelemetry-exporter-mlflow" / "pyproject.toml",
    ROOT / "pyproject.toml",
]


def _release(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split(".")[:3])


def _parameters(function: object) -> list[str]:
    return list(inspect.signature(function).parameters)  # type: ignore[arg-type]


@pytest.fixture
def provider() -> Iterator[tuple[MeterProvider, InMemoryMetricReader]]:
    reader = InMemoryMetricReader()
    made = meter_provider([reader])
    yield made, reader
    made.shutdown()


def test_the_installed_sdk_is_one_the_pins_accept() -> None:
    lowest, newest = _sdk_compat.SUPPORTED
    cap = f"{_release(newest)[0]}.{_release(newest)[1] + 1}"
    for pyproject in PYPROJECTS:
        dependencies = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
        (pin,) = [d for d in dependencies if d.split(">")[0].split("<")[0].strip() == "opentelemetry-sdk"]
        assert f"< {cap}" in pin, f"{pyproject.relative_to(ROOT)}: {pin!r} must be capped below {cap}"
    (floor,) = [
        d
        for d in tomllib.loads(PYPROJECTS[0].read_text())["project"]["dependencies"]
        if d.startswith("opentelemetry-sdk ")
    ]
    assert f">= {lowest}," in floor, f"the instrumentation's pin {floor!r} must start at the lowest tested {lowest}"
    installed = _release(_sdk_compat.SDK_VERSION)
    assert _release(lowest) <= installed < _release(f"{cap}.0"), f"{SDK} is outside the tested range {lowest}..{newest}"


def test_a_measurement_is_built_from_the_fields_the_sink_passes() -> None:
    from opentelemetry.sdk.metrics._internal.measurement import Measurement  # noqa: PLC0415

    names = [field.name for field in dataclasses.fields(Measurement)]
    required = [f.name for f in dataclasses.fields(Measurement) if f.default is dataclasses.MISSING]
    passed = ["value", "time_unix_nano", "instrument", "context", "attributes"]
    assert set(required) <= set(passed) <= set(names), f"{SDK}: Measurement fields are now {names}"


def test_the_sink_keeps_nan_and_the_given_time(provider) -> None:
    made, reader = provider
    gauge = made.get_meter("compat").create_gauge("compat.gauge")
    assert hasattr(gauge, "_measurement_consumer"), f"{SDK}: SDK instruments lost _measurement_consumer"
    consume = gauge._measurement_consumer.consume_measurement
    assert _parameters(consume) == ["measurement"], f"{SDK}: consume_measurement{inspect.signature(consume)}"
    sink = _sdk_compat.measurement_sink(gauge)
    assert sink is not None, f"{SDK}: no measurement sink for an SDK gauge"
    sink(math.nan, 1_700_000_000_123_456_789, {"k": "v"}, get_current())
    (metric,) = [m for rm in reader.get_metrics_data().resource_metrics for sm in rm.scope_metrics for m in sm.metrics]
    (point,) = metric.data.data_points
    assert math.isnan(point.value), f"{SDK}: the sink's NaN did not arrive"
    assert dict(point.attributes) == {"k": "v"}
    # The measurement's own time is what the exemplar (with the tensorboard View: every point) keeps.
    (exemplar,) = point.exemplars
    assert exemplar.time_unix_nano == 1_700_000_000_123_456_789, f"{SDK}: the sink's time was replaced"


def test_the_sink_reaches_through_the_api_proxy(provider) -> None:
    from opentelemetry.metrics._internal.instrument import _ProxyGauge  # noqa: PLC0415

    made, _reader = provider
    proxy = _ProxyGauge("compat.proxied", "", "")
    assert _sdk_compat.measurement_sink(proxy) is None  # no provider yet: the caller uses set()
    proxy.on_meter_set(made.get_meter("compat"))
    assert getattr(proxy, "_real_instrument", None) is not None, f"{SDK}: the API proxy lost _real_instrument"
    assert _sdk_compat.measurement_sink(proxy) is not None, f"{SDK}: no sink behind the API proxy"


def test_an_sdk_instrument_without_a_consumer_is_reported_with_the_version(provider) -> None:
    made, _reader = provider
    gauge = made.get_meter("compat").create_gauge("compat.broken")
    del gauge._measurement_consumer
    with pytest.raises(_sdk_compat.UnsupportedSdkError, match=f"opentelemetry-sdk {_sdk_compat.SDK_VERSION}"):
        _sdk_compat.measurement_sink(gauge)


def test_the_provider_tells_its_views_and_resource() -> None:
    views = [TensorBoardView(instrument_name="x")]
    made = MeterProvider(views=views, resource=Resource({"compat": "yes"}))
    try:
        assert _sdk_compat.provider_views(made) == tuple(views), f"{SDK}: MeterProvider._sdk_config.views moved"
        resource = _sdk_compat.provider_resource(made)
        assert resource is not None, f"{SDK}: MeterProvider._sdk_config.resource moved"
        assert resource.attributes["compat"] == "yes"
        assert has_views(made) is True
    finally:
        made.shutdown()


def test_an_exporters_preferences_are_readable() -> None:
    from opentelemetry.sdk.metrics import Counter  # noqa: PLC0415

    last = LastValueAggregation()
    exporter = ConsoleMetricExporter(
        preferred_temporality={Counter: AggregationTemporality.DELTA}, preferred_aggregation={Counter: last}
    )
    temporality, aggregation = _sdk_compat.exporter_preferences(exporter)
    assert temporality[Counter] is AggregationTemporality.DELTA, f"{SDK}: MetricExporter._preferred_temporality"
    assert aggregation[Counter] is last, f"{SDK}: MetricExporter._preferred_aggregation"


def test_the_stock_configurator_builds_metrics_through_the_replaced_function() -> None:
    from opentelemetry.sdk import _configuration  # noqa: PLC0415

    stock = _configuration._init_metrics
    expected = ["exporters_or_readers", "resource", "exporter_args_map", "meter_configurator"]
    assert _parameters(stock) == expected, f"{SDK}: _configuration._init_metrics{inspect.signature(stock)}"
    assert _parameters(configurator._init_metrics) == expected
    source = inspect.getsource(_configuration._initialize_components)
    for keyword in expected:
        assert f"{keyword}=" in source, f"{SDK}: _initialize_components no longer passes {keyword}= to _init_metrics"
    assert issubclass(configurator.TensorBoardConfigurator, _configuration._OTelSDKConfigurator)
    assert "_meter_configurator" in inspect.signature(MeterProvider.__init__).parameters, (
        f"{SDK}: MeterProvider no longer takes _meter_configurator"
    )
    with _sdk_compat.stock_metrics_replaced_by(configurator._init_metrics):
        assert _configuration._init_metrics is configurator._init_metrics
    assert _configuration._init_metrics is stock


def test_opentelemetry_instrument_gets_a_provider_that_keeps_every_point(tmp_path: Path) -> None:
    # In a child: the configurator sets the process's global providers, once.
    code = (
        "from opentelemetry.metrics import get_meter_provider\n"
        "from opentelemetry.sdk.metrics import AlwaysOnExemplarFilter\n"
        "from opentelemetry.instrumentation.tensorboard.configurator import TensorBoardConfigurator\n"
        "from opentelemetry.instrumentation.tensorboard.reservoir import has_views\n"
        "TensorBoardConfigurator().configure()\n"
        "provider = get_meter_provider()\n"
        "assert has_views(provider) is True, provider\n"
        "assert isinstance(provider._sdk_config.exemplar_filter, AlwaysOnExemplarFilter)\n"
        "print('ok')\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env.update(OTEL_METRICS_EXPORTER="none", OTEL_TRACES_EXPORTER="none", OTEL_LOGS_EXPORTER="none")
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip() == "ok", f"{SDK}: {done.stderr[-2000:]}"


def test_the_exemplar_names_are_public_and_keep_their_shape() -> None:
    fields = [field.name for field in dataclasses.fields(Exemplar)][:3]
    assert fields == ["filtered_attributes", "value", "time_unix_nano"], f"{SDK}: Exemplar fields {fields}"
    assert _parameters(ExemplarReservoir.offer)[1:] == ["value", "time_unix_nano", "attributes", "context"], (
        f"{SDK}: ExemplarReservoir.offer{inspect.signature(ExemplarReservoir.offer)}"
    )
    assert _parameters(ExemplarReservoir.collect)[1:] == ["point_attributes"], f"{SDK}: ExemplarReservoir.collect"
    assert "exemplar_reservoir_factory" in inspect.signature(View.__init__).parameters, f"{SDK}: View"


def test_the_view_conflict_warning_is_the_one_that_is_dropped() -> None:
    logger = logging.getLogger(_sdk_compat.VIEW_CONFLICT_LOGGER)
    seen: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record)

    def two_meters() -> None:
        reader = InMemoryMetricReader()
        made = meter_provider([reader])
        for name in ("first", "second"):
            made.get_meter(name).create_gauge("tensorboard.scalar").set(1.0, {"tensorboard.tag": "loss"})
        reader.get_metrics_data()
        made.shutdown()

    handler, filters = Keep(), list(logger.filters)
    logger.addHandler(handler)
    try:
        for installed in filters:
            logger.removeFilter(installed)
        two_meters()
        assert any(_sdk_compat.is_view_conflict(r, TensorBoardView) for r in seen), (
            f"{SDK}: the SDK no longer warns {_sdk_compat.VIEW_CONFLICT_MESSAGE!r} on "
            f"{_sdk_compat.VIEW_CONFLICT_LOGGER!r}: {[r.getMessage() for r in seen]}"
        )
        seen.clear()
        _sdk_compat.quiet_view_conflicts(TensorBoardView)
        _sdk_compat.quiet_view_conflicts(TensorBoardView)
        assert len(logger.filters) == 1
        two_meters()
        assert not any(_sdk_compat.is_view_conflict(r, TensorBoardView) for r in seen)
    finally:
        logger.removeHandler(handler)
        for installed in list(logger.filters):
            logger.removeFilter(installed)
        for installed in filters:
            logger.addFilter(installed)


def test_the_instrumentor_hook_for_any_of_the_writers_still_exists() -> None:
    # Not the SDK's but opentelemetry-instrumentation's: the override checks "tensorboard or tensorboardX".
    assert callable(getattr(BaseInstrumentor, "_check_dependency_conflicts", None)), (
        f"{SDK}: BaseInstrumentor._check_dependency_conflicts is gone"
    )


def test_an_otlp_exporters_resolved_endpoint_is_readable(monkeypatch: pytest.MonkeyPatch) -> None:
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter  # noqa: PLC0415

    given = OTLPMetricExporter(endpoint="http://127.0.0.1:4999/v1/metrics")
    assert _sdk_compat.exporter_endpoint(given) == "http://127.0.0.1:4999/v1/metrics", SDK
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4998")
    assert _sdk_compat.exporter_endpoint(OTLPMetricExporter()) == "http://127.0.0.1:4998/v1/metrics", SDK
    assert _sdk_compat.exporter_endpoint(ConsoleMetricExporter()) is None
