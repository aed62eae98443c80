"""tracelet's OTLP/HTTP receiver: metrics from an OpenTelemetry Collector (or any OTLP client) into MLflow.

``tracelet receive`` runs it; the collector's ``otlp_http`` exporter (``otel-collector.yaml``) posts
to it. Points go through the same mapping as the in-process MLflow exporter
(:class:`~opentelemetry.exporter.mlflow.mapping.Mapper`), so a run gets the same name, keys, params
and tags either way, and are written with the exporter's
:class:`~opentelemetry.exporter.mlflow.delivery.MlflowWriter` before the request is answered: a
200 means the points are in MLflow, so the collector's persistent queue, not this process, holds
whatever is not stored yet.

HTTP contract (OTLP/HTTP, ``POST /v1/metrics``, protobuf or JSON, optionally gzip; over TLS when
given a certificate):

- 200: every point is stored (points MLflow refuses for their content, and the runs of a deleted
  experiment, are logged once and counted in the response's ``partial_success``: the rest of the
  request lands); the body is an empty ``ExportMetricsServiceResponse`` in the request's encoding;
- 400: the body is not an OTLP metrics request (the message says why; not retried), or the request
  is not valid HTTP/1.1;
- 401: a token is configured and ``Authorization: Bearer <token>`` is missing or wrong;
- 404: another path; 405: another method; 411: neither a ``Content-Length`` (a number of bytes) nor
  ``Transfer-Encoding: chunked`` (any other transfer coding too);
- 413: the body, or what it unzips to, is larger than ``max_body``: a larger ``Content-Length`` is
  answered before the body is read, a chunked body as soon as it grows past ``max_body``;
- 415: a ``Content-Type`` other than ``application/x-protobuf``/``application/json``, or a
  ``Content-Encoding`` other than ``gzip``/``identity``;
- 500: writing into MLflow failed in a way that is no outage (an unexpected error, logged with its
  traceback once per kind); retrying cannot help, and OTLP senders do not retry a 500;
- 503 with ``Retry-After``: MLflow cannot take the points now (down, 5xx, 429, timeout, or refusing
  the receiver's credentials until they are fixed); nothing of the request counts as delivered and
  the sender sends it again (MLflow stores a repeated point once). Which failure is which is the MLflow
  exporter's one classification (``opentelemetry.exporter.mlflow.errors.classify``), and
  ``Retry-After`` is the first delay of its one retry policy.

Error bodies are a ``google.rpc.Status`` in the request's encoding, as OTLP specifies.

End of run: OTLP carries none, so the TensorBoard instrumentation observes ``tensorboard.run.end``
(with ``tensorboard.run.status``) in its last collection, and the receiver sets the run's status
from it, as the in-process exporter does at shutdown. A run whose job vanished without one
(SIGKILL, out of memory) is ended ``KILLED`` after ``silence`` seconds without points (default one
hour), at its last point's time; this state is in memory, so a receiver restarted meanwhile leaves
such a run ``RUNNING`` (``tracelet upload`` of the job's journal ends it too when the job used the
MLflow exporter). A run attached by id (``mlflow.run.id``) belongs to whoever created it: never ended.

Concurrency: uvicorn (its h11 protocol) serves every connection on one event loop, and a Starlette
endpoint reads each body there; decoding, mapping and the MLflow writes, which block, run in a pool
of ``THREADS`` threads, so requests are written into MLflow in parallel (the collector's
``sending_queue`` sends with several consumers), since a single ``log-batch`` in flight leaves both
MLflow and the receiver idle half the time. Only the mapping, whose per-run state (params and tags
already sent) is shared, runs one request at a time; it is pure computation. Points carry their own
step and wall time, so the order in which requests land does not matter.

Limits that keep one client from starving the others, and where each lives: ``max_connections``
open connections (more are closed at once, in the connection's protocol: uvicorn's
``limit_concurrency`` would answer them 503 instead, and count a full house as one too many), a
listen backlog of 128 (uvicorn's ``backlog``), ``read_timeout`` seconds for a client to send the
next part of a request or the next request on a kept-alive connection (uvicorn's
``timeout_keep_alive`` covers only the second, so the protocol times both), request heads up to
64 KiB (h11's ``max_incomplete_event_size``), and ``max_body`` in the endpoint (Starlette's body
limit answers in plain text, not as a ``google.rpc.Status``). A refused body is read away, up to
256 MiB, so that a client still sending reads the answer rather than a reset connection.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import functools
import hashlib
import hmac
import http
import ipaddress
import json
import logging
import os
import re
import signal
import socket
import sys
import threading
import time
import zlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import h11
import uvicorn
from google.protobuf import json_format
from google.protobuf.message import DecodeError, Message
from google.rpc.status_pb2 import Status
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from opentelemetry.exporter.mlflow.delivery import (
    MlflowExperimentDeleted,
    MlflowRejected,
    MlflowUnavailable,
    MlflowWriter,
    public_uri,
)
from opentelemetry.exporter.mlflow.errors import Failure, classify
from opentelemetry.exporter.mlflow.mapping import Mapper, RunBatch, RunKey
from opentelemetry.exporter.mlflow.reporting import ReportOnce
from opentelemetry.exporter.mlflow.retry import RETRY

_logger = logging.getLogger(__name__)

PATH = "/v1/metrics"
PROTOBUF = "application/x-protobuf"
JSON = "application/json"
MAX_BODY = 32 * 1024 * 1024
RETRY_AFTER = RETRY.retry_after()  # seconds the sender waits before retrying while MLflow is unavailable
SILENCE = 3600.0  # seconds without points after which a run whose job vanished is ended KILLED
MAX_CONNECTIONS = 256  # open connections at once; more are closed (the file limit stays far away)
READ_TIMEOUT = 60.0  # seconds a client may take to send the next part of its request
BACKLOG = 128  # the listen backlog: bursts of clients wait instead of being reset
# Requests decoded, mapped and written at once: the writer's requests.Session keeps 10 connections
# to MLflow, so more threads would open connections only to drop them after one request.
THREADS = 10
TOKEN_ENV = "TRACELET_RECEIVER_TOKEN"
_HEAD_LIMIT = 64 * 1024  # largest request line and headers
_DRAIN_LIMIT = 256 * 1024 * 1024  # larger refused bodies are not read; the connection is closed
_GZIP_MAGIC = b"\x1f\x8b"
_REMEMBERED = 64  # digests of recently delivered bodies (see Receiver._deliver)
# google.rpc.Code of the Status in error bodies, per HTTP status (as OTLP/HTTP pairs them).
_GRPC_CODES = {400: 3, 401: 16, 404: 12, 405: 12, 411: 3, 413: 8, 415: 3, 500: 13, 503: 14}
_PHRASES = {status: http.HTTPStatus(status).phrase.encode() for status in (400, 411)}
_FRAMING_REQUIRED = "a Content-Length header with a number of bytes, or Transfer-Encoding: chunked, is required"
_ID_KEYS = frozenset({"traceId", "trace_id", "spanId", "span_id"})
_JSON_HEAD = re.compile(rb"\r\ncontent-type:[ \t]*application/json", re.IGNORECASE)
# uvicorn's lines for each bad request or connection: the receiver reports those itself, once per kind.
_UVICORN_PER_REQUEST = frozenset(
    {"Invalid HTTP request received.", "Exceeded concurrency limit.", "Unsupported upgrade request."}
)


class _HttpError(Exception):
    """A request answered with an error status; ``message`` goes into the response body."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


class Receiver:
    """An OTLP/HTTP metrics receiver writing into MLflow; ``start()``/``stop()`` in process, or ``serve_forever()``.

    The port is bound when the receiver is made, so a port in use fails here, and clients that
    connect before :meth:`start` wait in the backlog.

    Args:
        host, port: where to listen (port 0: a free port, see :attr:`port`).
        tracking_uri: MLflow tracking URI; default ``MLFLOW_TRACKING_URI``, else MLflow's default.
        experiment: experiment for points whose resource names none; default ``MLFLOW_EXPERIMENT_NAME``.
        token: require ``Authorization: Bearer <token>``; default ``TRACELET_RECEIVER_TOKEN``; empty: none.
        max_body: largest request body in bytes, compressed or not.
        timeout: seconds one MLflow request may take.
        silence: seconds without points after which a run this receiver wrote, and that did not say
            it ended, is ended ``KILLED`` (its job vanished: SIGKILL, out of memory, a lost node); 0: never.
        tls_cert, tls_key: serve HTTPS with this PEM certificate (chain) and private key (``tls_key``
            may be left out when the certificate file holds the key too).
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 4319,
        tracking_uri: str | None = None,
        experiment: str | None = None,
        token: str | None = None,
        max_body: int = MAX_BODY,
        timeout: float = 10.0,
        silence: float = SILENCE,
        tls_cert: str | os.PathLike[str] | None = None,
        tls_key: str | os.PathLike[str] | None = None,
    ) -> None:
        if isinstance(max_body, bool) or not isinstance(max_body, int) or max_body < 1:
            raise ValueError(f"max_body must be a positive number of bytes, got {max_body!r}")
        if tls_key is not None and tls_cert is None:
            raise ValueError("a TLS key needs its certificate (tls_cert)")
        self.max_body = max_body
        self.max_connections = MAX_CONNECTIONS
        self.timeout = timeout
        self.silence = silence
        # Runs written and not ended yet: when their last points came (monotonic s) and their time (ms).
        self._open_runs: dict[RunKey, tuple[float, int]] = {}
        self._watcher: threading.Thread | None = None
        self._stopped = threading.Event()
        self.token = token if token is not None else os.environ.get(TOKEN_ENV, "")
        self.writer = MlflowWriter(tracking_uri, timeout)
        # One mapper for the receiver's lifetime: params and tags go to MLflow once, not per request.
        self._mapper = Mapper(experiment or os.environ.get("MLFLOW_EXPERIMENT_NAME") or None)
        self._map_lock = threading.Lock()  # the mapper's per-run state: one request maps at a time
        self._state = threading.Condition()  # deliveries in flight, closing, delivered digests
        self._inflight = 0
        self._delivered: collections.OrderedDict[bytes, None] = collections.OrderedDict()
        self._unavailable = False
        self._report_once = ReportOnce(_logger)
        self._closing = False
        self._closed = False
        self._limiter: anyio.CapacityLimiter | None = None  # made on the server's event loop
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None
        self.host = host
        self.tls = tls_cert is not None
        self._socket = _listen(host, port)
        try:
            self.port = int(self._socket.getsockname()[1])
            config = uvicorn.Config(
                self._app(),
                http=functools.partial(_Handler, receiver=self),
                loop="asyncio",
                ws="none",
                lifespan="on",
                log_config=None,  # the process's logging stays as it is
                access_log=False,
                server_header=False,
                proxy_headers=False,
                backlog=BACKLOG,
                timeout_keep_alive=int(READ_TIMEOUT),  # the protocol applies _Handler.timeout
                timeout_graceful_shutdown=int(2 * timeout + 5),  # deliveries end within MLflow's timeout
                h11_max_incomplete_event_size=_HEAD_LIMIT,
                ssl_certfile=os.fspath(tls_cert) if tls_cert is not None else None,
                ssl_keyfile=os.fspath(tls_key) if tls_key is not None else None,
            )
            config.load()  # a certificate that cannot be read fails here, not in the serving thread
        except BaseException:
            self._socket.close()
            raise
        self._server = uvicorn.Server(config)
        self._connections = self._server.server_state.connections  # every open connection's protocol
        _quiet_uvicorn()
        if not self.token and not _loopback(host):
            _logger.warning(
                "tracelet receiver: listening on %s without a token; anyone who reaches it can write into MLflow "
                "(set --token or %s, and serve TLS with --tls-cert or behind a proxy)",
                host,
                TOKEN_ENV,
            )

    @property
    def url(self) -> str:
        """The metrics URL a client posts to."""
        return f"{self.endpoint}{PATH}"

    @property
    def endpoint(self) -> str:
        """The base URL for the collector's ``otlp_http`` exporter (it appends ``/v1/metrics``)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}"

    # Life cycle ---------------------------------------------------------------------------------

    def start(self) -> Receiver:
        """Serves on a background thread once the application has started; returns self."""
        self._watch()
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._server.run, kwargs={"sockets": [self._socket]}, name="tracelet-receiver", daemon=True
            )
            self._thread.start()
            while not self._ready.wait(0.05):
                if not self._thread.is_alive():
                    self._thread = None
                    raise RuntimeError("tracelet receiver: the server stopped while starting")
        return self

    def serve_forever(self) -> None:
        """Serves in the calling thread until SIGINT or SIGTERM (uvicorn's handlers), then closes as :meth:`stop` does.

        uvicorn shuts down gracefully first (stops accepting, lets the deliveries in flight finish),
        then raises the signal again for the handler that was in place before.
        """
        self._watch()
        try:
            self._server.run(sockets=[self._socket])
        finally:
            self._close()

    def stop(self) -> None:
        """Stops accepting, lets the requests being delivered finish, closes every connection."""
        if self._thread is not None:
            self._server.should_exit = True
            self._thread.join()
            self._thread = None
        self._close()

    def _watch(self) -> None:
        if self.silence > 0 and self._watcher is None:
            watcher = threading.Thread(target=self._end_silent_runs, name="tracelet-receiver-silence", daemon=True)
            self._watcher = watcher
            watcher.start()

    def _end_silent_runs(self) -> None:
        """Ends ``KILLED`` the runs that sent nothing for ``silence`` seconds, at their last point's time."""
        while not self._stopped.wait(min(max(self.silence / 4, 0.05), 60.0)):
            now = time.monotonic()
            with self._state:
                silent = [(run, ms) for run, (seen, ms) in self._open_runs.items() if now - seen >= self.silence]
            for run, last_ms in silent:
                try:
                    self.writer.finish(run, "KILLED", last_ms)
                except (MlflowUnavailable, MlflowRejected):
                    continue  # tried again at the next look
                with self._state:
                    if self._open_runs.get(run, (now, 0))[0] < now:  # nothing arrived meanwhile
                        self._open_runs.pop(run, None)
                _logger.info(
                    "tracelet receiver: run %s sent nothing for %g s; ended KILLED",
                    run.run_name or run.instance_id,
                    self.silence,
                )

    def _close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._stopped.set()
        with self._state:  # deliveries in progress end (bounded by MLflow's timeout); later ones see _closing
            self._closing = True
            self._state.wait_for(lambda: self._inflight == 0, timeout=2 * self.timeout + 5)
        self._socket.close()  # uvicorn closed it if it served; not if it never started
        self.writer.close()

    def __enter__(self) -> Receiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _app(self) -> Starlette:
        @contextlib.asynccontextmanager
        async def lifespan(_app: Starlette) -> AsyncIterator[None]:
            self._limiter = anyio.CapacityLimiter(THREADS)
            self._ready.set()
            yield

        app = Starlette(
            routes=[Route(PATH, _Endpoint(self), methods=["POST"])],
            exception_handlers={HTTPException: self._not_routed},
            lifespan=lifespan,
        )
        app.router.redirect_slashes = False  # /v1/metrics/ is another path (404), as OTLP/HTTP has it
        return app

    # Requests -----------------------------------------------------------------------------------

    def report(self, what: str, message: str, *args: object, exc_info: BaseException | None = None) -> None:
        """Logs ``message`` the first time ``what`` happens: a misconfigured sender retries forever."""
        self._report_once(what, message, *args, exc_info=exc_info)

    def authorized(self, header: str | None) -> bool:
        """Without a token anything passes (the collector sends a bare ``Bearer`` when it has none)."""
        if not self.token:
            return True
        scheme, _, credentials = (header or "").strip().partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(credentials.strip().encode(), self.token.encode())

    async def _not_routed(self, request: Request, exc: Exception) -> Response:
        """Starlette's router found another path (404) or another method (405)."""
        if isinstance(exc, HTTPException) and exc.status_code == 405:
            refused = _HttpError(405, f"{request.method} is not allowed; use POST", {"Allow": "POST"})
        else:
            refused = _HttpError(404, f"not found; OTLP metrics go to POST {PATH}")
        return self.refusal(refused, request.scope, _unread(request.headers))

    def refusal(self, refused: _HttpError, scope: Scope, unread: int | None) -> Response:
        """The answer to a refused request, logged once per status; ``unread``: body bytes to come (None: chunked).

        A body the client is still sending is read away after the answer, so that it reads the
        answer rather than a reset connection: by uvicorn when its length is known and bounded (the
        connection then carries on), else here, up to 256 MiB, and the connection is closed.
        """
        headers = Headers(scope=scope)
        content_type = _content_type(headers)
        if refused.status not in (500, 503):  # write failures and MLflow outages are reported where they happen, once
            self.report(
                f"status:{refused.status}",
                "tracelet receiver: %s %s answered %d: %s (further %d answers are not reported)",
                scope["method"],
                (scope.get("raw_path") or scope["path"].encode()).decode("latin-1"),
                refused.status,
                refused.message,
                refused.status,
            )
        body = _encode(Status(code=_GRPC_CODES[refused.status], message=refused.message), content_type)
        media_type = JSON if content_type == JSON else PROTOBUF
        if unread == 0 or (unread is not None and unread <= _DRAIN_LIMIT and refused.status != 413):
            return Response(body, refused.status, refused.headers, media_type)
        # Chunked: up to the drain limit; declared: all of it, or nothing when it is too much to read.
        drain = _DRAIN_LIMIT if unread is None else unread if unread <= _DRAIN_LIMIT else 0
        return _Refusal(body, refused.status, {**refused.headers, "Connection": "close"}, media_type, drain)

    def handle(self, body: bytes, content_type: str, encoding: str) -> bytes:
        """Decodes, maps and delivers one request; returns the response body or raises :class:`_HttpError`."""
        if encoding == "gzip":
            body = self._gunzip(body)
        elif encoding not in ("", "identity"):
            raise _HttpError(415, f"Content-Encoding {encoding!r} is not supported; use gzip or none")
        request = _parse(body, content_type)
        partial = self._deliver(request, hashlib.blake2b(body, digest_size=16).digest())
        response = ExportMetricsServiceResponse()
        if partial is not None:
            response.partial_success.rejected_data_points, response.partial_success.error_message = partial
        return _encode(response, content_type)

    def _gunzip(self, body: bytes) -> bytes:
        """Every gzip member of ``body`` (``cat a.gz b.gz`` is one valid gzip stream), at most ``max_body`` bytes."""
        data = bytearray()
        rest = body
        while True:
            unzip = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
            try:
                data += unzip.decompress(rest, self.max_body + 1 - len(data))
            except zlib.error as exc:
                raise _HttpError(400, f"the body is not valid gzip: {exc}") from None
            if len(data) > self.max_body:
                raise _HttpError(413, f"the body unzips to more than {self.max_body} bytes (max_body)")
            if not unzip.eof:
                raise _HttpError(400, "the gzip body is truncated")
            rest = unzip.unused_data
            if not rest:
                return bytes(data)
            if not rest.startswith(_GZIP_MAGIC):
                raise _HttpError(400, f"the gzip body is followed by {len(rest)} bytes that are not gzip")

    def _deliver(self, request: ExportMetricsServiceRequest, digest: bytes) -> tuple[int, str] | None:
        """Maps and writes; returns (points refused, why) when MLflow refused some runs as a whole."""
        with self._state:
            if self._closing:
                raise _HttpError(503, "the receiver is stopping", {"Retry-After": str(RETRY_AFTER)})
            # A sender that timed out while we were writing sends the same body again: it is stored already.
            if digest in self._delivered:
                return None
            self._inflight += 1
        try:
            return self._map_and_write(request, digest)
        finally:
            with self._state:
                self._inflight -= 1
                self._state.notify_all()

    def _map_and_write(self, request: ExportMetricsServiceRequest, digest: bytes) -> tuple[int, str] | None:
        with self._map_lock:
            try:
                batches = self._mapper.from_otlp(request)
                ends = self._mapper.run_ends(request)
            except (ValueError, TypeError, KeyError, AttributeError, OverflowError) as exc:
                _logger.error("tracelet receiver: a request could not be mapped to MLflow: %r", exc)
                raise _HttpError(400, f"the points cannot be mapped to MLflow: {exc!r}") from None
        # Written outside the mapping lock: requests for other runs go to MLflow meanwhile.
        refused: list[str] = []
        rejected = 0
        try:
            for batch in batches:
                try:
                    self.writer.write(batch)
                except (MlflowRejected, MlflowExperimentDeleted) as exc:
                    # Refused alone: the other runs of the request land, and none waits behind this one.
                    reason = exc.message if isinstance(exc, MlflowRejected) else str(exc)
                    rejected += len(batch.metrics)
                    refused.append(f"run {batch.run.run_name or batch.run.instance_id}: {reason}")
                    self.report(
                        f"rejected:{batch.run}:{reason}",
                        "tracelet receiver: MLflow refused the points of run %s as a whole; they are dropped: %s",
                        batch.run.run_name or batch.run.instance_id,
                        reason,
                    )
            for run, status, end_ms in ends:  # a run given by id belongs to whoever created it
                if run.run_id is None:
                    self.writer.finish(run, status, end_ms)
        except Exception as exc:  # noqa: BLE001 - classified below; the receiver answers every request
            # Nothing of this request counts as sent (the writer re-sends params and tags it has no
            # acknowledgement for). MLflow down or refusing the credentials: the sender retries.
            # Anything else is no outage and retrying cannot help: 500, which OTLP senders do not
            # retry (the collector counts the points as dropped), with the traceback once.
            if classify(exc) not in (Failure.TRANSIENT, Failure.CREDENTIALS):
                self.report(
                    f"failed:{type(exc).__name__}",
                    "tracelet receiver: writing a request into MLflow failed (%s: %s); answering 500, "
                    "its points are not stored",
                    type(exc).__name__,
                    exc,
                    exc_info=exc,
                )
                raise _HttpError(500, f"the points could not be written: {type(exc).__name__}: {exc}") from None
            reason = str(exc)
            if not self._unavailable:
                self._unavailable = True
                _logger.warning(
                    "tracelet receiver: MLflow at %s cannot take points (%s); answering 503 so the sender retries",
                    public_uri(self.writer.tracking_uri),
                    reason,
                )
            raise _HttpError(503, f"MLflow is unavailable: {reason}", {"Retry-After": str(RETRY_AFTER)}) from None
        if self._unavailable:
            self._unavailable = False
            _logger.info("tracelet receiver: MLflow at %s takes points again", public_uri(self.writer.tracking_uri))
        self._track(batches, ends)
        with self._state:
            self._delivered[digest] = None
            if len(self._delivered) > _REMEMBERED:
                self._delivered.popitem(last=False)
        return (rejected, "; ".join(refused)) if refused else None

    def _track(self, batches: list[RunBatch], ends: list[tuple[RunKey, str, int]]) -> None:
        """Notes when each written run last sent points, and forgets those that ended."""
        if self.silence <= 0:
            return
        now = time.monotonic()
        with self._state:
            for batch in batches:
                if batch.run.run_id is None and batch.metrics:
                    last = max(timestamp for _key, _value, timestamp, _step in batch.metrics)
                    previous = self._open_runs.get(batch.run, (0.0, last))[1]
                    self._open_runs[batch.run] = (now, max(last, previous))
            for run, _status, _end_ms in ends:
                self._open_runs.pop(run, None)


class _Endpoint:
    """``POST /v1/metrics`` as an ASGI app: the token, the body's framing and size, then the work in a thread.

    An ASGI app rather than a Starlette request handler, because a refused body is read after the
    answer went out (:class:`_Refusal`), and a request that never arrives whole gets no answer.
    """

    def __init__(self, receiver: Receiver) -> None:
        self.receiver = receiver

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        receiver = self.receiver
        headers = Headers(scope=scope)
        content_type = _content_type(headers)
        unread = _unread(headers)
        try:
            if not receiver.authorized(headers.get("authorization")):
                raise _HttpError(401, "missing or wrong bearer token", {"WWW-Authenticate": "Bearer"})
            if unread == 0 and "content-length" not in headers:
                raise _HttpError(411, _FRAMING_REQUIRED)
            if unread is not None and unread > receiver.max_body:
                raise _HttpError(413, f"the body has {unread} bytes, more than {receiver.max_body} (max_body)")
            body = await self._read(receive)
            if body is None:  # nothing to answer: the request never arrived whole
                return
            unread = 0
            encoding = headers.get("content-encoding", "").strip().lower()
            assert receiver._limiter is not None  # made at start-up
            answer = await anyio.to_thread.run_sync(
                receiver.handle, body, content_type, encoding, limiter=receiver._limiter
            )
            response = Response(answer, 200, media_type=JSON if content_type == JSON else PROTOBUF)
        except _HttpError as refused:
            response = receiver.refusal(refused, scope, unread)
        await response(scope, receive, send)

    async def _read(self, receive: Receive) -> bytes | None:
        """The whole body, or None when the client went away (or stopped sending for the read timeout)."""
        limit = self.receiver.max_body
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:  # only a chunked body gets here: a declared length was checked before
                raise _HttpError(413, f"the chunked body grew past {limit} bytes (max_body)")
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)


class _Refusal(Response):
    """An answer sent whole, then up to ``drain`` bytes of the request's body read away, then the connection closed."""

    def __init__(self, body: bytes, status: int, headers: dict[str, str], media_type: str, drain: int) -> None:
        super().__init__(body, status, headers, media_type)
        self.drain = drain

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        # The body is all on the wire here (its length is declared); the response ends after the drain.
        await send({"type": "http.response.body", "body": self.body, "more_body": True})
        left = self.drain
        while left > 0:
            message = await receive()
            if message["type"] != "http.request":
                break
            left -= len(message.get("body", b""))
            if not message.get("more_body", False):
                break
        await send({"type": "http.response.body", "body": b"", "more_body": False})


class _Handler(H11Protocol):
    """uvicorn's h11 protocol with the limits it lacks: at most ``max_connections``, a read timeout, 411 for framing.

    ``timeout``: seconds a connection may wait for its client (the rest of a request, or the next
    one) before it is closed without an answer; a connection whose request is being delivered is
    not waiting for its client.
    """

    timeout = READ_TIMEOUT

    def __init__(self, *args: Any, receiver: Receiver, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.receiver = receiver
        self.timeout_keep_alive = self.timeout
        self._last_activity = 0.0
        self._read_timer: asyncio.TimerHandle | None = None
        self._head = bytearray()  # what came since the last answer: the Content-Type of an unparsable request

    def connection_made(self, transport: asyncio.Transport) -> None:
        super().connection_made(transport)
        if len(self.connections) > self.receiver.max_connections:
            self.receiver.report(
                "connections",
                "tracelet receiver: more than %d connections at once; further ones are closed (reported once)",
                self.receiver.max_connections,
            )
            transport.close()
            return
        self._last_activity = self.loop.time()
        self._read_timer = self.loop.call_later(self.timeout, self._read_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._read_timer is not None:
            self._read_timer.cancel()
            self._read_timer = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self._last_activity = self.loop.time()
        if self.conn.their_state is h11.IDLE and len(self._head) < _HEAD_LIMIT:
            self._head += data[: _HEAD_LIMIT - len(self._head)]
        super().data_received(data)

    def on_response_complete(self) -> None:
        self._last_activity = self.loop.time()
        self._head.clear()
        super().on_response_complete()

    def _delivering(self) -> bool:
        """The request arrived whole and is not answered yet: the wait is the receiver's, not the client's."""
        cycle = self.cycle
        return (
            cycle is not None
            and not cycle.response_complete
            and self.conn.their_state in (h11.DONE, h11.MUST_CLOSE, h11.CLOSED)
        )

    def _read_timeout(self) -> None:
        self._read_timer = None
        if self.transport.is_closing():
            return
        waited = self.loop.time() - self._last_activity
        if waited < self.timeout or self._delivering():
            delay = self.timeout - waited if waited < self.timeout else self.timeout
            self._read_timer = self.loop.call_later(delay, self._read_timeout)
            return
        self.transport.close()  # the endpoint, if waiting for the body, sees the client gone

    def shutdown(self) -> None:
        """At server shutdown: a request still arriving (or a refused body being read away) ends now."""
        if self.cycle is not None and not self.cycle.response_complete and not self._delivering():
            self.transport.close()
            return
        super().shutdown()

    def send_400_response(self, msg: str) -> None:
        """Answers a request h11 cannot parse: 411 when its framing is the reason, else 400; then closes.

        uvicorn calls this from the ``except`` clause that caught h11's error, which is how the
        error itself (with h11's reason) is at hand.
        """
        error = sys.exc_info()[1]
        reason = str(error) if isinstance(error, h11.ProtocolError) else msg
        if "Content-Length" in reason or "Transfer-Encoding" in reason:
            status = 411
            message = f"{_FRAMING_REQUIRED} ({reason})"
        else:
            status, message = 400, f"the request is not valid HTTP/1.1: {reason}"
        self.receiver.report(
            f"status:{status}",
            "tracelet receiver: a request answered %d: %s (further %d answers are not reported)",
            status,
            message,
            status,
        )
        content_type = JSON if _JSON_HEAD.search(self._head) else PROTOBUF
        body = _encode(Status(code=_GRPC_CODES[status], message=message), content_type)
        headers = [
            (b"content-type", content_type.encode()),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
        ]
        answer = [h11.Response(status_code=status, headers=headers, reason=_PHRASES[status]), h11.Data(data=body)]
        with contextlib.suppress(h11.LocalProtocolError):  # h11 cannot answer at all: the connection just closes
            for event in [*answer, h11.EndOfMessage()]:
                self.transport.write(self.conn.send(event) or b"")
        self.transport.close()


class _QuietUvicorn(logging.Filter):
    """Drops uvicorn's start-up and shutdown lines and its line per bad request; its errors stay."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno > logging.INFO and record.msg not in _UVICORN_PER_REQUEST


_QUIET = _QuietUvicorn()


def _quiet_uvicorn() -> None:
    """The receiver logs its own start and stop, and reports each kind of bad request once."""
    logging.getLogger("uvicorn.error").addFilter(_QUIET)  # once: the same filter is not added twice


def _listen(host: str, port: int) -> socket.socket:
    """A listening socket (IPv6 for an address with a colon), so that a port in use fails at once."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return socket.create_server((host, port), family=family, backlog=BACKLOG)


def _content_type(headers: Headers) -> str:
    return headers.get("content-type", "").split(";")[0].strip().lower()


def _unread(headers: Headers) -> int | None:
    """Bytes of body the request declares (0: none), or None for a chunked body (h11 checked the framing)."""
    if "transfer-encoding" in headers:
        return None
    return _length(headers.get("content-length")) or 0


def _parse(body: bytes, content_type: str) -> ExportMetricsServiceRequest:
    if content_type == PROTOBUF:
        try:
            return ExportMetricsServiceRequest.FromString(body)
        except (DecodeError, RecursionError) as exc:
            raise _HttpError(400, f"the body is not an OTLP ExportMetricsServiceRequest in protobuf: {exc}") from None
    if content_type == JSON:
        try:
            document = json.loads(body)
            _hex_ids(document)
            return json_format.ParseDict(document, ExportMetricsServiceRequest(), ignore_unknown_fields=True)
        except RecursionError:
            raise _HttpError(
                400, "the body is not an OTLP ExportMetricsServiceRequest in JSON: nested too deeply"
            ) from None
        except (ValueError, TypeError, AttributeError, json_format.ParseError) as exc:
            raise _HttpError(400, f"the body is not an OTLP ExportMetricsServiceRequest in JSON: {exc}") from None
    raise _HttpError(415, f"Content-Type {content_type!r} is not supported; use {PROTOBUF} or {JSON}")


def _hex_ids(node: Any) -> None:
    """OTLP/JSON writes trace and span ids in hex where protobuf's JSON mapping expects base64."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in _ID_KEYS and isinstance(value, str):
                node[key] = base64.b64encode(bytes.fromhex(value)).decode()
            else:
                _hex_ids(value)
    elif isinstance(node, list):
        for item in node:
            _hex_ids(item)


def _encode(message: Message, content_type: str) -> bytes:
    if content_type == JSON:
        return json_format.MessageToJson(message, indent=None).encode()
    return message.SerializeToString()


def _length(header: str | None) -> int | None:
    """``Content-Length`` as a number of bytes; ``None`` when missing or not ASCII digits (``²`` is not)."""
    value = (header or "").strip()
    return int(value) if value.isascii() and value.isdigit() else None


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def serve(
    host: str = "127.0.0.1",
    port: int = 4319,
    tracking_uri: str | None = None,
    experiment: str | None = None,
    token: str | None = None,
    max_body: int = MAX_BODY,
    silence: float = SILENCE,
    tls_cert: str | Path | None = None,
    tls_key: str | Path | None = None,
) -> int:
    """Runs the receiver until Ctrl-C or SIGTERM (``tracelet receive``); the exit status: 130 after Ctrl-C, else 0."""
    receiver = Receiver(
        host, port, tracking_uri, experiment, token, max_body, silence=silence, tls_cert=tls_cert, tls_key=tls_key
    )
    terminated = False

    def stop(signum: int, _frame: object) -> None:
        nonlocal terminated
        terminated = True  # asked to stop (a service manager): an orderly exit
        raise KeyboardInterrupt

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, stop)  # uvicorn raises it again here once it has shut down
    _logger.info(
        "tracelet receiver: OTLP/HTTP on %s, writing to MLflow at %s%s",
        receiver.url,
        public_uri(receiver.writer.tracking_uri),
        " (bearer token required)" if receiver.token else "",
    )
    with contextlib.suppress(KeyboardInterrupt):
        receiver.serve_forever()
    _logger.info("tracelet receiver: stopped")
    return 0 if terminated else 130
