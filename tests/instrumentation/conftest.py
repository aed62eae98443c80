"""A provider with the tensorboard View and an in-memory reader, instrumented for one test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from opentelemetry.instrumentation.tensorboard import TensorBoardInstrumentor
from opentelemetry.instrumentation.tensorboard.configurator import meter_provider


@pytest.fixture
def reader() -> Iterator[InMemoryMetricReader]:
    reader = InMemoryMetricReader()
    provider = meter_provider([reader])
    instrumentor = TensorBoardInstrumentor()
    instrumentor.instrument(meter_provider=provider)
    yield reader
    instrumentor.uninstrument()
    provider.shutdown()
