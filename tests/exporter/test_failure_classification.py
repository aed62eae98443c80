"""One classification of failures: what is retried (outages), what is not (credentials, content, surprises)."""

from __future__ import annotations

import errno
import http.server
import json
import threading
from collections.abc import Iterator

import pytest
import requests
from support.process import free_port

from opentelemetry.exporter.mlflow.errors import (
    Failure,
    HttpAnswer,
    MlflowCredentialsRefused,
    MlflowExperimentDeleted,
    MlflowRejected,
    MlflowUnavailable,
    classify,
)
from opentelemetry.exporter.mlflow.retry import RetryPolicy
from opentelemetry.exporter.mlflow.transport import RestTransport


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (HttpAnswer(503), Failure.TRANSIENT),
        (HttpAnswer(500, "INTERNAL_ERROR", "boom"), Failure.TRANSIENT),
        (HttpAnswer(429, "REQUEST_LIMIT_EXCEEDED"), Failure.TRANSIENT),
        (HttpAnswer(408), Failure.TRANSIENT),
        (HttpAnswer(404), Failure.TRANSIENT),  # no MLflow error code: a proxy or a login page, not MLflow
        (HttpAnswer(401), Failure.CREDENTIALS),
        (HttpAnswer(403, "PERMISSION_DENIED"), Failure.CREDENTIALS),
        (HttpAnswer(400, "INVALID_PARAMETER_VALUE", "changed param"), Failure.REFUSED),
        (HttpAnswer(400, "TEMPORARILY_UNAVAILABLE"), Failure.TRANSIENT),
        (ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused"), Failure.TRANSIENT),
        (TimeoutError("timed out"), Failure.TRANSIENT),
        (OSError(errno.EHOSTUNREACH, "No route to host"), Failure.TRANSIENT),
        (requests.ConnectionError("refused"), Failure.TRANSIENT),
        (requests.Timeout("read timed out"), Failure.TRANSIENT),
        (MlflowUnavailable("down"), Failure.TRANSIENT),
        (MlflowExperimentDeleted("restore it"), Failure.TRANSIENT),
        (MlflowCredentialsRefused("401"), Failure.CREDENTIALS),
        (MlflowRejected("INVALID_PARAMETER_VALUE", "no"), Failure.REFUSED),
        (TypeError("a bug"), Failure.UNEXPECTED),
        (KeyError("run"), Failure.UNEXPECTED),
        (ValueError("bad"), Failure.UNEXPECTED),
        (OSError(errno.ENOSPC, "No space left on device"), Failure.UNEXPECTED),
    ],
)
def test_each_failure_has_one_kind(error: BaseException, kind: Failure) -> None:
    assert classify(error) is kind


def test_mlflow_and_database_errors_are_classified_by_their_code_and_kind() -> None:
    import sqlalchemy.exc  # noqa: PLC0415 - what MLflow's tracking store raises
    from mlflow.exceptions import MlflowException  # noqa: PLC0415
    from mlflow.protos import databricks_pb2 as codes  # noqa: PLC0415

    assert classify(MlflowException("later", error_code=codes.TEMPORARILY_UNAVAILABLE)) is Failure.TRANSIENT
    assert classify(MlflowException("who?", error_code=codes.UNAUTHENTICATED)) is Failure.CREDENTIALS
    assert classify(MlflowException("not you", error_code=codes.PERMISSION_DENIED)) is Failure.CREDENTIALS
    assert classify(MlflowException("no", error_code=codes.INVALID_PARAMETER_VALUE)) is Failure.REFUSED
    assert classify(MlflowException("gone", error_code=codes.RESOURCE_DOES_NOT_EXIST)) is Failure.REFUSED
    locked = sqlalchemy.exc.OperationalError("INSERT ...", {}, Exception("database is locked"))
    assert classify(locked) is Failure.TRANSIENT
    broken = sqlalchemy.exc.IntegrityError("INSERT ...", {}, Exception("UNIQUE constraint failed"))
    assert classify(broken) is Failure.UNEXPECTED


class _Answers(http.server.BaseHTTPRequestHandler):
    """Answers every request with the status its path names (``/503/...``), as a server in front of MLflow."""

    def do_GET(self) -> None:
        status = int(self.path.strip("/").split("/")[0])
        body = json.dumps({"error_code": "INVALID_PARAMETER_VALUE", "message": "refused"}).encode()
        self.send_response(status)
        if status == 400:
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *_args: object) -> None:
        pass


@pytest.fixture
def answering() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Answers)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@pytest.mark.parametrize(
    ("status", "raised", "kind"),
    [
        (503, MlflowUnavailable, Failure.TRANSIENT),
        (429, MlflowUnavailable, Failure.TRANSIENT),
        (401, MlflowCredentialsRefused, Failure.CREDENTIALS),
        (403, MlflowCredentialsRefused, Failure.CREDENTIALS),
        (400, MlflowRejected, Failure.REFUSED),
    ],
)
def test_the_rest_transport_raises_what_the_classification_says(
    answering: str, status: int, raised: type[Exception], kind: Failure
) -> None:
    transport = RestTransport(answering + f"/{status}", timeout=5)
    transport.base = answering + f"/{status}/"
    with pytest.raises(raised) as caught:
        transport.call("GET", "runs/get")
    assert classify(caught.value) is kind
    if raised is MlflowRejected:
        assert not isinstance(caught.value, MlflowUnavailable)
    transport.close()


def test_a_refused_connection_is_an_outage() -> None:
    transport = RestTransport(f"http://127.0.0.1:{free_port()}", timeout=2)  # nothing listens there
    with pytest.raises(MlflowUnavailable, match="cannot connect") as caught:
        transport.call("GET", "runs/get")
    assert classify(caught.value) is Failure.TRANSIENT
    transport.close()


def _attempts(*failures: BaseException) -> tuple[list[int], object]:
    """An attempt that raises ``failures`` in turn, then returns "stored"; and the list of its calls."""
    calls: list[int] = []

    def attempt() -> str:
        calls.append(len(calls))
        if len(calls) <= len(failures):
            raise failures[len(calls) - 1]
        return "stored"

    return calls, attempt


@pytest.mark.parametrize(
    "failure",
    [TypeError("a bug"), MlflowCredentialsRefused("HTTP 401"), MlflowRejected("INVALID_PARAMETER_VALUE", "no")],
)
def test_what_is_not_transient_is_raised_after_one_attempt(failure: BaseException) -> None:
    calls, attempt = _attempts(failure)
    slept: list[float] = []
    with pytest.raises(type(failure)):
        RetryPolicy().call(attempt, sleep=slept.append)
    assert calls == [0] and slept == []


@pytest.mark.parametrize(
    "failure",
    [
        MlflowUnavailable("HTTP 503 from http://127.0.0.1/"),
        MlflowUnavailable("HTTP 429 from http://127.0.0.1/"),
        ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused"),
        requests.ConnectionError("Connection refused"),
    ],
)
def test_transient_failures_are_retried_until_the_attempt_succeeds(failure: BaseException) -> None:
    calls, attempt = _attempts(failure, failure)
    slept: list[float] = []
    assert RetryPolicy(jitter=0).call(attempt, sleep=slept.append) == "stored"
    assert calls == [0, 1, 2] and slept == [0.25, 0.5]
