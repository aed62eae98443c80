"""tracelet's OTLP/HTTP receiver against a real MLflow server: encodings, refusals, tokens, MLflow outages.

Requests are what OpenTelemetry really sends: points recorded by the TensorBoard recorder in an SDK
MeterProvider and encoded by the OTLP exporter's encoder (or OTLP/JSON written as the spec shows it).
"""

from __future__ import annotations

import gzip
import json
import math
import uuid
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
import requests
from google.rpc.status_pb2 import Status
from opentelemetry.exporter.otlp.proto.common.metrics_encoder import encode_metrics
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.resources import Resource
from route_support import MlflowReader, ReceiverProcess
from support.mlflow_server import MlflowServer

from opentelemetry.instrumentation.tensorboard.capture import Recorder
from opentelemetry.instrumentation.tensorboard.configurator import meter_provider
from tracelet.receiver import Receiver

PROTOBUF = {"Content-Type": "application/x-protobuf"}
T0 = 1_700_000_000.0  # whole seconds: wall times whose milliseconds are exact
MAX_DOUBLE = 1.7976931348623157e308


def sdk_request(
    experiment: str,
    points: list[tuple[str, float, int]],
    params: dict[str, Any] | None = None,
    instance: str | None = None,
) -> ExportMetricsServiceRequest:
    """One collection of (tag, value, step) points, point i at T0 + i ms, as the OTLP exporter encodes it."""
    reader = InMemoryMetricReader()
    resource = Resource(
        {
            "service.name": "receiver-test",
            "service.instance.id": instance or uuid.uuid4().hex,
            "mlflow.experiment.name": experiment,
        }
    )
    provider = meter_provider([reader], resource, shutdown_on_exit=False)
    recorder = Recorder(provider.get_meter("test"))
    for i, (tag, value, step) in enumerate(points):
        recorder.scalar(tag, value, step, T0 + i / 1000, "runs/receiver")
    if params:
        recorder.hparams(params, None)
    data = reader.get_metrics_data()
    provider.shutdown()
    return encode_metrics(data)


def json_request(experiment: str, steps: list[int]) -> dict[str, Any]:
    """OTLP/JSON as the spec writes it: int64 as strings, trace and span ids in hex."""
    now = int(T0 * 1e9)
    exemplars = [
        {
            "asDouble": step / 10,
            "timeUnixNano": str(now + step * 1_000_000),
            "traceId": "5b8efff798038103d269b633813fc60c",
            "spanId": "eee19b7ec3c1b174",
            "filteredAttributes": [{"key": "tensorboard.step", "value": {"intValue": str(step)}}],
        }
        for step in steps
    ]
    point = {
        "asDouble": steps[-1] / 10,
        "timeUnixNano": str(now),
        "attributes": [{"key": "tensorboard.tag", "value": {"stringValue": "json/loss"}}],
        "exemplars": exemplars,
    }
    resource = [
        {"key": "service.name", "value": {"stringValue": "receiver-json"}},
        {"key": "service.instance.id", "value": {"stringValue": uuid.uuid4().hex}},
        {"key": "mlflow.experiment.name", "value": {"stringValue": experiment}},
    ]
    metric = {"name": "tensorboard.scalar", "unit": "1", "gauge": {"dataPoints": [point]}}
    return {"resourceMetrics": [{"resource": {"attributes": resource}, "scopeMetrics": [{"metrics": [metric]}]}]}


@pytest.fixture
def receiver(mlflow_server: MlflowServer) -> Iterator[Receiver]:
    with Receiver(port=0, tracking_uri=mlflow_server.uri, token="") as running:
        yield running


@pytest.fixture
def reader(mlflow_server: MlflowServer) -> MlflowReader:
    return MlflowReader(mlflow_server.uri)


def status(response: requests.Response) -> Status:
    if response.headers["Content-Type"] == "application/json":
        return Status(**{k: v for k, v in response.json().items() if k in ("code", "message")})
    return Status.FromString(response.content)


def test_gzip_protobuf_request_lands_in_mlflow(receiver: Receiver, reader: MlflowReader, experiment: str) -> None:
    points = [("loss", 1.0 / (step + 1), step) for step in range(50)]
    points += [("loss", math.nan, 50), ("loss", math.inf, 51)]
    body = gzip.compress(sdk_request(experiment, points, {"lr": 0.1, "layers": 3}).SerializeToString())

    for _ in range(2):  # a retried request stores nothing twice
        response = requests.post(receiver.url, data=body, headers={**PROTOBUF, "Content-Encoding": "gzip"}, timeout=60)
        assert response.status_code == 200, response.content
        assert response.headers["Content-Type"] == "application/x-protobuf"
        assert ExportMetricsServiceResponse.FromString(response.content) == ExportMetricsServiceResponse()

    run = reader.only_run(experiment)
    assert run.info.run_name == "receiver-test"
    assert run.data.params == {"lr": "0.1", "layers": "3"}
    stored = reader.history(run.info.run_id, "receiver/loss")  # the writer's log dir names the key
    # Point i's wall time is the double T0 + i / 1000, floored exactly to the millisecond.
    expected_ms = [math.floor(Fraction(T0 + i / 1000) * 1000) for i in range(52)]
    assert [(step, ms) for step, _, ms in stored] == list(enumerate(expected_ms))
    assert [value for _, value, _ in stored[:50]] == [value for _, value, _ in points[:50]]
    assert math.isnan(stored[50][1])
    assert stored[51][1] == MAX_DOUBLE  # how MLflow stores +inf


def test_json_request_lands_in_mlflow(receiver: Receiver, reader: MlflowReader, experiment: str) -> None:
    response = requests.post(receiver.url, json=json_request(experiment, [0, 1, 2, 2**40]), timeout=60)
    assert response.status_code == 200, response.content
    assert response.headers["Content-Type"] == "application/json"
    assert response.json() == {}

    run = reader.only_run(experiment)
    assert run.info.run_name == "receiver-json"
    stored = reader.history(run.info.run_id, "json/loss")
    ms = int(T0 * 1000)
    assert stored == [(step, step / 10, ms + step) for step in (0, 1, 2, 2**40)]


@pytest.mark.parametrize(
    ("body", "headers", "says"),
    [
        pytest.param(b"\xff\xff\xff", PROTOBUF, "not an OTLP ExportMetricsServiceRequest in protobuf", id="protobuf"),
        pytest.param(b"{not json", {"Content-Type": "application/json"}, "in JSON", id="json"),
        pytest.param(b'{"resourceMetrics": 3}', {"Content-Type": "application/json"}, "resourceMetrics", id="schema"),
        pytest.param(b"not gzip", {**PROTOBUF, "Content-Encoding": "gzip"}, "not valid gzip", id="gzip"),
    ],
)
def test_malformed_body_is_400(receiver: Receiver, body: bytes, headers: dict[str, str], says: str) -> None:
    response = requests.post(receiver.url, data=body, headers=headers, timeout=30)
    assert response.status_code == 400
    assert response.headers["Content-Type"] == headers["Content-Type"]
    assert says in status(response).message


def test_oversize_body_is_413(mlflow_server: MlflowServer, experiment: str) -> None:
    small = sdk_request(experiment, [("loss", 0.5, 0)]).SerializeToString()
    with Receiver(port=0, tracking_uri=mlflow_server.uri, max_body=len(small) + 100) as receiver:
        too_big = requests.post(receiver.url, data=b"\0" * (len(small) + 101), headers=PROTOBUF, timeout=30)
        assert too_big.status_code == 413
        assert "max_body" in status(too_big).message
        # Small on the wire, too big once unzipped.
        bomb = gzip.compress(b"\0" * 10 * (len(small) + 100))
        assert len(bomb) < len(small)
        unzipped = requests.post(receiver.url, data=bomb, headers={**PROTOBUF, "Content-Encoding": "gzip"}, timeout=30)
        assert unzipped.status_code == 413
        assert requests.post(receiver.url, data=small, headers=PROTOBUF, timeout=30).status_code == 200


def test_token_is_required_when_set(
    mlflow_server: MlflowServer, experiment: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    body = sdk_request(experiment, [("loss", 0.5, 0)]).SerializeToString()
    monkeypatch.setenv("TRACELET_RECEIVER_TOKEN", "s3cret")
    with Receiver(port=0, tracking_uri=mlflow_server.uri) as receiver:
        for authorization in (None, "Bearer", "Bearer wrong", "Basic s3cret"):
            headers = {**PROTOBUF, **({"Authorization": authorization} if authorization else {})}
            response = requests.post(receiver.url, data=body, headers=headers, timeout=30)
            assert response.status_code == 401, authorization
            assert response.headers["WWW-Authenticate"] == "Bearer"
        right = requests.post(receiver.url, data=body, headers={**PROTOBUF, "Authorization": "Bearer s3cret"})
        assert right.status_code == 200
    # No token configured: the collector's header for an empty TRACELET_RECEIVER_TOKEN is ignored.
    with Receiver(port=0, tracking_uri=mlflow_server.uri, token="") as open_receiver:
        response = requests.post(open_receiver.url, data=body, headers={**PROTOBUF, "Authorization": "Bearer"})
        assert response.status_code == 200


def test_wrong_path_method_or_type(receiver: Receiver) -> None:
    base = receiver.url.removesuffix("/v1/metrics")
    assert requests.post(f"{base}/v1/traces", data=b"", headers=PROTOBUF, timeout=30).status_code == 404
    response = requests.get(receiver.url, timeout=30)
    assert response.status_code == 405
    assert response.headers["Allow"] == "POST"
    assert requests.post(receiver.url, data=b"", headers={"Content-Type": "text/plain"}, timeout=30).status_code == 415
    zstd = {**PROTOBUF, "Content-Encoding": "zstd"}
    assert requests.post(receiver.url, data=b"", headers=zstd, timeout=30).status_code == 415


def test_mlflow_down_is_503_and_the_retry_delivers_everything(tmp_path: Path, experiment: str) -> None:
    server = MlflowServer(tmp_path / "mlflow").start()
    try:
        instance = uuid.uuid4().hex
        first = sdk_request(experiment, [("loss", 1.0, 0)], {"lr": 0.1}, instance).SerializeToString()
        second = sdk_request(experiment, [("loss", 0.5, 1)], {"lr": 0.1, "late": "yes"}, instance).SerializeToString()
        with Receiver(port=0, tracking_uri=server.uri) as receiver:
            assert requests.post(receiver.url, data=first, headers=PROTOBUF, timeout=60).status_code == 200
            server.stop()
            down = requests.post(receiver.url, data=second, headers=PROTOBUF, timeout=60)
            assert down.status_code == 503
            assert int(down.headers["Retry-After"]) > 0
            assert "MLflow is unavailable" in status(down).message
            server.start()
            # The sender retries the same request: its param must go again although it was mapped before.
            assert requests.post(receiver.url, data=second, headers=PROTOBUF, timeout=60).status_code == 200

        reader = MlflowReader(server.uri)
        run = reader.only_run(experiment)
        assert run.data.params == {"lr": "0.1", "late": "yes"}
        ms = int(T0 * 1000)
        assert reader.history(run.info.run_id, "receiver/loss") == [(0, 1.0, ms), (1, 0.5, ms)]
    finally:
        server.stop()


def test_cli_receiver_serves_until_sigterm(mlflow_server: MlflowServer, tmp_path: Path, experiment: str) -> None:
    receiver = ReceiverProcess(mlflow_server.uri, tmp_path / "receiver.log", token="t0ken").start()
    try:
        body = json.dumps(json_request(experiment, [7])).encode()
        headers = {"Content-Type": "application/json", "Authorization": "Bearer t0ken"}
        response = requests.post(f"{receiver.endpoint}/v1/metrics", data=body, headers=headers, timeout=60)
        assert response.status_code == 200, receiver.logs()
    finally:
        assert receiver.stop() == 0, receiver.logs()
    assert "bearer token required" in receiver.logs()
    assert MlflowReader(mlflow_server.uri).only_run(experiment).data.metrics == {"json/loss": 0.7}
