"""tracelet's OTLP/HTTP receiver against a real MLflow server: encodings, refusals, tokens, MLflow outages.

Requests are what OpenTelemetry really sends: points recorded by the TensorBoard recorder in an SDK
MeterProvider and encoded by the OTLP exporter's encoder (or OTLP/JSON written as the spec shows it).
"""

from __future__ import annotations

import contextlib
import gzip
import json
import logging
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
    ended: str | None = None,
) -> ExportMetricsServiceRequest:
    """One collection of (tag, value, step) points, point i at T0 + i ms, as the OTLP exporter encodes it.

    ``ended``: the collection is the run's last, ending it with that status (``Recorder.end``).
    """
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
    if ended:
        recorder.end(ended)
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


class _GatedMlflow:
    """A proxy in front of MLflow that holds each ``log-batch`` until ``parties`` are in flight at once.

    A receiver that writes one request at a time never gets there: the gate opens after its
    timeout instead, and ``most`` stays 1.
    """

    def __init__(self, upstream: str, parties: int) -> None:
        import threading  # noqa: PLC0415
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer  # noqa: PLC0415

        self.most = 0
        inflight = 0
        lock = threading.Lock()
        gate = threading.Barrier(parties, timeout=30)
        proxy = self

        class Relay(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _relay(self) -> None:
                nonlocal inflight
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                batch = "log-batch" in self.path
                if batch:
                    with lock:
                        inflight += 1
                        proxy.most = max(proxy.most, inflight)
                    with contextlib.suppress(threading.BrokenBarrierError):
                        gate.wait()
                try:
                    answer = requests.request(
                        self.command,
                        upstream.rstrip("/") + self.path,
                        data=body or None,
                        headers={"Content-Type": self.headers.get("Content-Type", "application/json")},
                        timeout=60,
                    )
                finally:
                    if batch:
                        with lock:
                            inflight -= 1
                self.send_response(answer.status_code)
                self.send_header("Content-Type", answer.headers.get("Content-Type", "application/json"))
                self.send_header("Content-Length", str(len(answer.content)))
                self.end_headers()
                self.wfile.write(answer.content)

            def do_GET(self) -> None:
                self._relay()

            def do_POST(self) -> None:
                self._relay()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Relay)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.uri = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_requests_of_different_jobs_are_written_in_parallel(mlflow_server: MlflowServer, experiment: str) -> None:
    from concurrent.futures import ThreadPoolExecutor  # noqa: PLC0415

    gated = _GatedMlflow(mlflow_server.uri, parties=3)
    bodies = [
        sdk_request(experiment, [("loss", step / 10, step) for step in range(50)]).SerializeToString()
        for _job in range(3)
    ]
    try:
        with Receiver(port=0, tracking_uri=gated.uri, token="") as receiver, ThreadPoolExecutor(3) as pool:
            answers = list(
                pool.map(lambda body: requests.post(receiver.url, data=body, headers=PROTOBUF, timeout=120), bodies)
            )
    finally:
        gated.close()
    assert [a.status_code for a in answers] == [200] * 3
    assert gated.most == 3  # three log-batch requests in MLflow at once
    reader = MlflowReader(mlflow_server.uri)
    runs = reader.runs(experiment)
    assert len(runs) == 3
    for run in runs:
        assert [row[0] for row in reader.history(run.info.run_id, "receiver/loss")] == list(range(50))


def test_gzip_of_several_members_is_read_whole_and_trailing_bytes_refused(
    receiver: Receiver, reader: MlflowReader, experiment: str
) -> None:
    first = sdk_request(experiment, [("loss", 0.5, 0)], instance="members").SerializeToString()
    headers = {**PROTOBUF, "Content-Encoding": "gzip"}
    # Two members make one valid gzip stream (``cat a.gz b.gz``); here they hold one request's two halves.
    half = len(first) // 2
    body = gzip.compress(first[:half]) + gzip.compress(first[half:])
    assert requests.post(receiver.url, data=body, headers=headers, timeout=30).status_code == 200
    assert [row[0] for row in reader.history(reader.only_run(experiment).info.run_id, "receiver/loss")] == [0]
    garbage = requests.post(receiver.url, data=gzip.compress(first) + b"junk", headers=headers, timeout=30)
    assert garbage.status_code == 400
    assert "4 bytes that are not gzip" in status(garbage).message


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        pytest.param(b"Content-Length: \xc2\xb2\r\n", b" 411 ", id="superscript-two"),
        pytest.param(b"Content-Length: -5\r\n", b" 411 ", id="negative"),
    ],
)
def test_a_content_length_that_is_not_a_number_is_411(receiver: Receiver, raw: bytes, expected: bytes) -> None:
    answer = _raw_exchange(receiver, b"POST /v1/metrics HTTP/1.1\r\nHost: x\r\n" + raw + b"\r\n")
    assert answer.startswith(b"HTTP/1.1" + expected), answer[:200]


def test_json_nested_too_deeply_is_400(receiver: Receiver) -> None:
    body = b"[" * 100_000 + b"]" * 100_000
    response = requests.post(receiver.url, data=body, headers={"Content-Type": "application/json"}, timeout=60)
    assert response.status_code == 400
    assert "nested too deeply" in status(response).message


def test_oversize_content_length_is_refused_before_the_body_is_sent(mlflow_server: MlflowServer) -> None:
    with Receiver(port=0, tracking_uri=mlflow_server.uri, token="", max_body=1_000) as receiver:
        head = b"POST /v1/metrics HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\n"
        answer = _raw_exchange(receiver, head + b"Content-Length: 5000000\r\n\r\n", shut_write=False)
    assert answer.startswith(b"HTTP/1.1 413 "), answer[:200]


def test_idle_and_half_sent_connections_cannot_starve_clients(
    mlflow_server: MlflowServer, experiment: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import socket  # noqa: PLC0415
    import time  # noqa: PLC0415

    import tracelet.receiver as receiver_module  # noqa: PLC0415

    monkeypatch.setattr(receiver_module, "MAX_CONNECTIONS", 8)
    monkeypatch.setattr(receiver_module._Handler, "timeout", 2.0)
    body = sdk_request(experiment, [("loss", 0.5, 0)]).SerializeToString()
    with Receiver(port=0, tracking_uri=mlflow_server.uri, token="") as receiver:
        idle = [socket.create_connection((receiver.host, receiver.port), timeout=30) for _ in range(8)]
        try:
            for connection in idle:  # half a request each, then nothing
                connection.sendall(b"POST /v1/metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nabc")
            deadline = time.monotonic() + 30
            while len(receiver._connections) < 8 and time.monotonic() < deadline:
                time.sleep(0.05)
            with socket.create_connection((receiver.host, receiver.port), timeout=30) as ninth:
                assert ninth.recv(1 << 16) == b"", "a connection beyond the limit is closed at once"
            for connection in idle:  # dropped once the read timeout passed, without an answer
                assert connection.recv(1 << 16) == b""
        finally:
            for connection in idle:
                connection.close()
        assert requests.post(receiver.url, data=body, headers=PROTOBUF, timeout=30).status_code == 200


def _raw_exchange(receiver: Receiver, request: bytes, shut_write: bool = True) -> bytes:
    """Sends raw bytes (what ``requests`` would refuse to send) and returns the whole answer."""
    import socket  # noqa: PLC0415

    with socket.create_connection((receiver.host, receiver.port), timeout=30) as connection:
        connection.sendall(request)
        if shut_write:
            connection.shutdown(socket.SHUT_WR)
        answer = b""
        while b"\r\n\r\n" not in answer:
            chunk = connection.recv(1 << 16)
            if not chunk:
                break
            answer += chunk
        return answer


def test_a_deleted_experiment_is_refused_alone_and_the_rest_of_the_request_lands(
    receiver: Receiver, reader: MlflowReader, experiment: str
) -> None:
    deleted = f"{experiment}-deleted"
    reader.client.delete_experiment(reader.client.create_experiment(deleted))
    request = sdk_request(deleted, [("loss", 0.5, 0), ("loss", 0.25, 1)])
    request.resource_metrics.extend(sdk_request(experiment, [("loss", 0.5, 0)]).resource_metrics)
    response = requests.post(receiver.url, data=request.SerializeToString(), headers=PROTOBUF, timeout=60)
    assert response.status_code == 200
    answer = ExportMetricsServiceResponse.FromString(response.content)
    assert answer.partial_success.rejected_data_points == 2
    assert "is deleted; restore it" in answer.partial_success.error_message
    assert [row[0] for row in reader.history(reader.only_run(experiment).info.run_id, "receiver/loss")] == [0]


@pytest.mark.parametrize("status", ["FINISHED", "FAILED", "KILLED"])
def test_the_last_collection_ends_the_run_with_its_status(
    receiver: Receiver, reader: MlflowReader, experiment: str, status: str
) -> None:
    instance = uuid.uuid4().hex
    first = sdk_request(experiment, [("loss", 0.5, 0)], instance=instance)
    assert requests.post(receiver.url, data=first.SerializeToString(), headers=PROTOBUF, timeout=30).status_code == 200
    assert reader.only_run(experiment).info.status == "RUNNING"
    last = sdk_request(experiment, [("loss", 0.25, 1)], instance=instance, ended=status)
    assert requests.post(receiver.url, data=last.SerializeToString(), headers=PROTOBUF, timeout=30).status_code == 200
    run = reader.only_run(experiment)
    assert run.info.status == status
    assert [row[0] for row in reader.history(run.info.run_id, "receiver/loss")] == [0, 1]


def test_a_run_whose_job_vanished_is_ended_killed_after_the_silence(
    mlflow_server: MlflowServer, reader: MlflowReader, experiment: str
) -> None:
    import time  # noqa: PLC0415

    request = sdk_request(experiment, [("loss", 0.5, 0), ("loss", 0.25, 1)])
    with Receiver(port=0, tracking_uri=mlflow_server.uri, token="", silence=1.0) as receiver:
        assert requests.post(receiver.url, data=request.SerializeToString(), headers=PROTOBUF, timeout=30).ok
        deadline = time.monotonic() + 60
        while reader.only_run(experiment).info.status == "RUNNING" and time.monotonic() < deadline:
            time.sleep(0.2)
    run = reader.only_run(experiment)
    assert run.info.status == "KILLED"
    assert run.info.end_time == math.floor(Fraction(T0 + 1 / 1000) * 1000)  # its last point's time


def test_a_chunked_body_lands_and_one_growing_past_max_body_is_413(
    mlflow_server: MlflowServer, reader: MlflowReader, experiment: str
) -> None:
    body = sdk_request(experiment, [("loss", 0.5, 0), ("loss", 0.25, 1)]).SerializeToString()
    pieces = [body[i : i + 100] for i in range(0, len(body), 100)]
    with Receiver(port=0, tracking_uri=mlflow_server.uri, token="", max_body=len(body)) as receiver:
        # A generator body: requests sends it chunked, without a Content-Length.
        landed = requests.post(receiver.url, data=iter(pieces), headers=PROTOBUF, timeout=30)
        assert landed.request.headers["Transfer-Encoding"] == "chunked"
        assert landed.status_code == 200, landed.content
        too_big = requests.post(receiver.url, data=iter([*pieces, b"\0"]), headers=PROTOBUF, timeout=30)
        assert too_big.status_code == 413
        assert "max_body" in status(too_big).message
    assert [row[0] for row in reader.history(reader.only_run(experiment).info.run_id, "receiver/loss")] == [0, 1]


def test_a_transfer_coding_other_than_chunked_is_411_in_the_request_encoding(receiver: Receiver) -> None:
    import socket  # noqa: PLC0415

    head = b"POST /v1/metrics HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    with socket.create_connection((receiver.host, receiver.port), timeout=30) as connection:
        connection.sendall(head + b"Transfer-Encoding: gzip\r\n\r\n")
        answer = b""
        while chunk := connection.recv(1 << 16):  # the connection closes after the answer
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 411 "), answer[:200]
    headers, _, body = answer.partition(b"\r\n\r\n")
    assert b"\r\ncontent-type: application/json" in headers.lower()
    assert "Transfer-Encoding: chunked" in json.loads(body)["message"]


def test_a_refused_body_is_read_away_and_its_connection_carries_the_next_request(mlflow_server: MlflowServer) -> None:
    big = b"\0" * 5_000_000  # far more than the socket buffers hold
    with Receiver(port=0, tracking_uri=mlflow_server.uri, token="s3cret", max_body=1_000) as receiver:
        session = requests.Session()
        unauthorized = session.post(receiver.url, data=big, headers=PROTOBUF, timeout=60)
        assert unauthorized.status_code == 401
        assert "Connection" not in unauthorized.headers  # kept: the rest of the body is read away
        ports = {connection.client[1] for connection in receiver._connections}
        authorized = session.post(receiver.url, data=b"", headers={**PROTOBUF, "Authorization": "Bearer s3cret"})
        assert authorized.status_code == 200
        assert {connection.client[1] for connection in receiver._connections} == ports  # the same connection
        # Over max_body: answered, then the body read away and the connection closed.
        too_big = session.post(receiver.url, data=big, headers={**PROTOBUF, "Authorization": "Bearer s3cret"})
        assert too_big.status_code == 413
        assert too_big.headers["Connection"] == "close"
        session.close()


def _self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key, as PEM files."""
    import datetime  # noqa: PLC0415
    import ipaddress  # noqa: PLC0415

    from cryptography import x509  # noqa: PLC0415
    from cryptography.hazmat.primitives import hashes, serialization  # noqa: PLC0415
    from cryptography.hazmat.primitives.asymmetric import ec  # noqa: PLC0415
    from cryptography.x509.oid import NameOID  # noqa: PLC0415

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "tracelet receiver test")])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "receiver.crt", folder / "receiver.key"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


def test_tls_serves_https_with_the_given_certificate(
    mlflow_server: MlflowServer, reader: MlflowReader, experiment: str, tmp_path: Path
) -> None:
    cert, key = _self_signed(tmp_path)
    body = sdk_request(experiment, [("loss", 0.5, 0)]).SerializeToString()
    with Receiver(port=0, tracking_uri=mlflow_server.uri, token="", tls_cert=cert, tls_key=key) as receiver:
        assert receiver.url.startswith("https://127.0.0.1:")
        with pytest.raises(requests.exceptions.SSLError):  # a client that does not trust the certificate
            requests.post(receiver.url, data=body, headers=PROTOBUF, timeout=30)
        with pytest.raises(requests.exceptions.ConnectionError):  # plain HTTP to a TLS port
            requests.post(receiver.url.replace("https://", "http://"), data=body, headers=PROTOBUF, timeout=30)
        response = requests.post(receiver.url, data=body, headers=PROTOBUF, timeout=30, verify=str(cert))
        assert response.status_code == 200, response.content
    assert [row[0] for row in reader.history(reader.only_run(experiment).info.run_id, "receiver/loss")] == [0]


def test_cli_receiver_serves_tls_until_sigterm(
    mlflow_server: MlflowServer, reader: MlflowReader, experiment: str, tmp_path: Path
) -> None:
    import subprocess  # noqa: PLC0415
    import sys  # noqa: PLC0415

    from support.collector import free_port, stop_process  # noqa: PLC0415
    from support.env import subprocess_env  # noqa: PLC0415

    cert, key = _self_signed(tmp_path)
    port = free_port()
    args = ["receive", "--port", str(port), "--tracking-uri", mlflow_server.uri, "--tls-cert", str(cert)]
    process = subprocess.Popen(
        [sys.executable, "-m", "tracelet.cli", *args, "--tls-key", str(key)],
        env=subprocess_env(),
        stdin=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stderr is not None
        for line in process.stderr:  # wait until it listens
            if "OTLP/HTTP on" in line:
                break
        assert f"https://127.0.0.1:{port}/v1/metrics" in line
        body = sdk_request(experiment, [("loss", 0.5, 0)]).SerializeToString()
        url = f"https://127.0.0.1:{port}/v1/metrics"
        assert requests.post(url, data=body, headers=PROTOBUF, timeout=60, verify=str(cert)).status_code == 200
    finally:
        assert stop_process(process) == 0
    assert [row[0] for row in reader.history(reader.only_run(experiment).info.run_id, "receiver/loss")] == [0]


def test_an_error_that_is_no_outage_is_500_once_logged_and_the_next_request_lands(
    receiver: Receiver, reader: MlflowReader, experiment: str, monkeypatch: pytest.MonkeyPatch, caplog
) -> None:
    """Retrying cannot help an error of no known kind: 500 (OTLP senders do not retry it), the traceback once."""

    def broken(*_args: object, **_kwargs: object) -> None:
        raise ZeroDivisionError("a bug in writing")

    write = receiver.writer.write
    monkeypatch.setattr(receiver.writer, "write", broken)
    body = sdk_request(experiment, [("loss", 1.0, 0)]).SerializeToString()
    with caplog.at_level(logging.WARNING, logger="tracelet.receiver"):
        for _ in range(2):
            answer = requests.post(receiver.url, data=body, headers=PROTOBUF, timeout=60)
            assert answer.status_code == 500
            assert "Retry-After" not in answer.headers
            assert "ZeroDivisionError: a bug in writing" in status(answer).message
    logged = [r for r in caplog.records if "answering 500" in r.getMessage()]
    assert len(logged) == 1 and logged[0].exc_info is not None
    monkeypatch.setattr(receiver.writer, "write", write)
    assert requests.post(receiver.url, data=body, headers=PROTOBUF, timeout=60).status_code == 200
    run = reader.only_run(experiment)
    assert reader.history(run.info.run_id, "receiver/loss") == [(0, 1.0, int(T0 * 1000))]
