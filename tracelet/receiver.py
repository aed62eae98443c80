"""tracelet's OTLP/HTTP receiver: metrics from an OpenTelemetry Collector (or any OTLP client) into MLflow.

``tracelet receive`` runs it; the collector's ``otlp_http`` exporter (``otel-collector.yaml``) posts
to it. Points go through the same mapping as the in-process MLflow exporter
(:class:`~opentelemetry.exporter.mlflow.mapping.Mapper`), so a run gets the same name, keys, params
and tags either way, and are written with the exporter's
:class:`~opentelemetry.exporter.mlflow.delivery.MlflowWriter` before the request is answered: a
200 means the points are in MLflow, so the collector's persistent queue, not this process, holds
whatever is not stored yet.

HTTP contract (OTLP/HTTP, ``POST /v1/metrics``, protobuf or JSON, optionally gzip):

- 200: every point is stored (points MLflow refuses for their content, and the runs of a deleted
  experiment, are logged once and counted in the response's ``partial_success``: the rest of the
  request lands); the body is an empty ``ExportMetricsServiceResponse`` in the request's encoding;
- 400: the body is not an OTLP metrics request (the message says why; not retried);
- 401: a token is configured and ``Authorization: Bearer <token>`` is missing or wrong;
- 404: another path; 405: another method; 411: no ``Content-Length``;
- 413: the body, or what it unzips to, is larger than ``max_body``;
- 415: a ``Content-Type`` other than ``application/x-protobuf``/``application/json``, or a
  ``Content-Encoding`` other than ``gzip``/``identity``;
- 503 with ``Retry-After``: MLflow cannot take the points now (down, 5xx, 429, timeout); nothing of
  the request counts as delivered and the sender sends it again (MLflow stores a repeated point once).

Error bodies are a ``google.rpc.Status`` in the request's encoding, as OTLP specifies.

End of run: OTLP carries none, so the TensorBoard instrumentation observes ``tensorboard.run.end``
(with ``tensorboard.run.status``) in its last collection, and the receiver sets the run's status
from it, as the in-process exporter does at shutdown. A run whose job vanished without one
(SIGKILL, out of memory) is ended ``KILLED`` after ``silence`` seconds without points (default one
hour), at its last point's time; this state is in memory, so a receiver restarted meanwhile leaves
such a run ``RUNNING`` (``tracelet upload`` of the job's journal ends it too when the job used the
MLflow exporter). A run attached by id (``mlflow.run.id``) belongs to whoever created it: never ended.

Concurrency: requests are served and written into MLflow in parallel (one thread per connection;
the collector's ``sending_queue`` sends with several consumers), since a single ``log-batch`` in
flight leaves both MLflow and the receiver idle half the time. Only the mapping, whose per-run state
(params and tags already sent) is shared, runs one request at a time; it is pure computation. Points
carry their own step and wall time, so the order in which requests land does not matter. Limits
that keep one client from starving the others: ``max_connections`` open connections (more are
closed at once), a listen backlog of 128, and ``read_timeout`` seconds for a client to send the
next part of a request (half-sent requests do not hold threads for ever).
"""

from __future__ import annotations

import base64
import collections
import contextlib
import hashlib
import hmac
import ipaddress
import json
import logging
import os
import signal
import socket
import threading
import time
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import DecodeError, Message
from google.rpc.status_pb2 import Status
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)

from opentelemetry.exporter.mlflow.delivery import (
    MlflowExperimentDeleted,
    MlflowRejected,
    MlflowUnavailable,
    MlflowWriter,
    public_uri,
)
from opentelemetry.exporter.mlflow.mapping import Mapper, RunBatch, RunKey

_logger = logging.getLogger(__name__)

PATH = "/v1/metrics"
PROTOBUF = "application/x-protobuf"
JSON = "application/json"
MAX_BODY = 32 * 1024 * 1024
RETRY_AFTER = 2  # seconds the sender waits before retrying while MLflow is unavailable
SILENCE = 3600.0  # seconds without points after which a run whose job vanished is ended KILLED
MAX_CONNECTIONS = 256  # open connections at once; more are closed (the file limit stays far away)
READ_TIMEOUT = 60.0  # seconds a client may take to send the next part of its request
TOKEN_ENV = "TRACELET_RECEIVER_TOKEN"
_DRAIN_LIMIT = 256 * 1024 * 1024  # larger refused bodies are not read; the connection is closed
_GZIP_MAGIC = b"\x1f\x8b"
_REMEMBERED = 64  # digests of recently delivered bodies (see Receiver._deliver)
# google.rpc.Code of the Status in error bodies, per HTTP status (as OTLP/HTTP pairs them).
_GRPC_CODES = {400: 3, 401: 16, 404: 12, 405: 12, 411: 3, 413: 8, 415: 3, 503: 14}
_ID_KEYS = frozenset({"traceId", "trace_id", "spanId", "span_id"})


class _HttpError(Exception):
    """A request answered with an error status; ``message`` goes into the response body."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


class Receiver:
    """An OTLP/HTTP metrics receiver writing into MLflow; ``start()``/``stop()`` in process, or ``serve_forever()``.

    Args:
        host, port: where to listen (port 0: a free port, see :attr:`port`).
        tracking_uri: MLflow tracking URI; default ``MLFLOW_TRACKING_URI``, else MLflow's default.
        experiment: experiment for points whose resource names none; default ``MLFLOW_EXPERIMENT_NAME``.
        token: require ``Authorization: Bearer <token>``; default ``TRACELET_RECEIVER_TOKEN``; empty: none.
        max_body: largest request body in bytes, compressed or not.
        timeout: seconds one MLflow request may take.
        silence: seconds without points after which a run this receiver wrote, and that did not say
            it ended, is ended ``KILLED`` (its job vanished: SIGKILL, out of memory, a lost node); 0: never.
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
    ) -> None:
        if isinstance(max_body, bool) or not isinstance(max_body, int) or max_body < 1:
            raise ValueError(f"max_body must be a positive number of bytes, got {max_body!r}")
        self.max_body = max_body
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
        self._reported: set[str] = set()
        self._closing = False
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        self._server = _Server((host, port), _Handler, self)
        self._thread: threading.Thread | None = None
        self.host = host
        self.port = int(self._server.server_address[1])
        if not self.token and not _loopback(host):
            _logger.warning(
                "tracelet receiver: listening on %s without a token; anyone who reaches it can write into MLflow "
                "(set --token or %s, and put TLS in front of it)",
                host,
                TOKEN_ENV,
            )

    @property
    def url(self) -> str:
        """The metrics URL a client posts to."""
        return f"http://{self.host}:{self.port}{PATH}"

    @property
    def endpoint(self) -> str:
        """The base URL for the collector's ``otlp_http`` exporter (it appends ``/v1/metrics``)."""
        return f"http://{self.host}:{self.port}"

    # Life cycle ---------------------------------------------------------------------------------

    def start(self) -> Receiver:
        """Serves on a background thread; returns self."""
        self._watch()
        if self._thread is None:
            self._thread = threading.Thread(target=self._server.serve_forever, name="tracelet-receiver", daemon=True)
            self._thread.start()
        return self

    def serve_forever(self) -> None:
        """Serves in the calling thread until interrupted, then closes as :meth:`stop` does."""
        self._watch()
        try:
            self._server.serve_forever()
        finally:
            self._close()

    def stop(self) -> None:
        """Stops accepting, lets the request being delivered finish, closes every connection."""
        if self._thread is not None:
            self._server.shutdown()
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
        self._stopped.set()
        with self._state:  # deliveries in progress end (bounded by MLflow's timeout); later ones see _closing
            self._closing = True
            self._state.wait_for(lambda: self._inflight == 0, timeout=2 * self.timeout + 5)
        self._server.server_close()
        with self._connections_lock:
            for connection in self._connections:
                with contextlib.suppress(OSError):
                    connection.shutdown(socket.SHUT_RDWR)
        self.writer.close()

    def __enter__(self) -> Receiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # Requests -----------------------------------------------------------------------------------

    def report(self, what: str, message: str, *args: object) -> None:
        """Logs ``message`` the first time ``what`` happens: a misconfigured sender retries forever."""
        if what not in self._reported:
            self._reported.add(what)
            _logger.warning(message, *args)

    def authorized(self, header: str | None) -> bool:
        """Without a token anything passes (the collector sends a bare ``Bearer`` when it has none)."""
        if not self.token:
            return True
        scheme, _, credentials = (header or "").strip().partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(credentials.strip().encode(), self.token.encode())

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
                self._mapper = Mapper(self._mapper.default_experiment)  # may have marked params as sent
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
        except Exception as exc:
            # Nothing of this request counts as sent: params and tags go again with the retry.
            with self._map_lock:
                for batch in batches:
                    self._mapper.forget(batch.run)
            reason = str(exc) if isinstance(exc, MlflowUnavailable) else f"{type(exc).__name__}: {exc}"
            if not self._unavailable:
                self._unavailable = True
                _logger.warning(
                    "tracelet receiver: MLflow at %s cannot take points (%s); answering 503 so the sender retries",
                    public_uri(self.writer.tracking_uri),
                    reason,
                    exc_info=not isinstance(exc, MlflowUnavailable),
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


class _Server(ThreadingHTTPServer):
    request_queue_size = 128  # the listen backlog: bursts of clients wait instead of being reset

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], receiver: Receiver) -> None:
        self.receiver = receiver
        super().__init__(address, handler)

    def verify_request(self, request: Any, client_address: Any) -> bool:
        """Closes a connection beyond ``MAX_CONNECTIONS`` at once, so idle clients cannot exhaust the file limit."""
        with self.receiver._connections_lock:
            full = len(self.receiver._connections) >= MAX_CONNECTIONS
        if full:
            self.receiver.report(
                "connections",
                "tracelet receiver: more than %d connections at once; further ones are closed (reported once)",
                MAX_CONNECTIONS,
            )
        return not full


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"  # keep-alive: the collector reuses its connection
    timeout = READ_TIMEOUT  # on the socket: a client that stops sending is dropped, its thread freed

    def setup(self) -> None:
        super().setup()
        receiver = self.server.receiver
        with receiver._connections_lock:
            receiver._connections.add(self.connection)

    def finish(self) -> None:
        receiver = self.server.receiver
        with receiver._connections_lock:
            receiver._connections.discard(self.connection)
        super().finish()

    def do_POST(self) -> None:
        receiver = self.server.receiver
        content_type = self.headers.get("Content-Type", "").split(";")[0].strip().lower()
        self._body_read = False
        self._too_large = False
        try:
            if self.path.split("?")[0] != PATH:
                raise _HttpError(404, f"not found; OTLP metrics go to POST {PATH}")
            if not receiver.authorized(self.headers.get("Authorization")):
                raise _HttpError(401, "missing or wrong bearer token", {"WWW-Authenticate": "Bearer"})
            length = _length(self.headers.get("Content-Length"))
            if length is None:
                raise _HttpError(411, "a Content-Length header with a number of bytes is required")
            if length > receiver.max_body:
                self._too_large = True
                raise _HttpError(413, f"the body has {length} bytes, more than {receiver.max_body} (max_body)")
            try:
                body = self.rfile.read(length)
            except OSError:  # the client stopped sending for READ_TIMEOUT, or went away
                body = b""
            if len(body) < length:  # nothing to answer: the request never arrived whole
                self.close_connection = True
                return
            self._body_read = True
            encoding = self.headers.get("Content-Encoding", "").strip().lower()
            self._reply(200, receiver.handle(body, content_type, encoding), content_type)
        except _HttpError as refused:
            self._refuse(refused, content_type)

    def _refuse(self, refused: _HttpError, content_type: str) -> None:
        if getattr(self, "_too_large", False):  # answered before the body is read; then the connection closes
            self.close_connection = True
            refused.headers["Connection"] = "close"
            self._answer(refused, content_type)
            self._discard_body()  # so the client, still sending, reads the answer rather than a reset
            return
        if not self._body_read and not self._discard_body():  # the connection cannot carry on
            self.close_connection = True
            refused.headers["Connection"] = "close"
        self._answer(refused, content_type)

    def _answer(self, refused: _HttpError, content_type: str) -> None:
        if refused.status != 503:  # MLflow outages are reported by the receiver, once
            self.server.receiver.report(
                f"status:{refused.status}",
                "tracelet receiver: %s %s answered %d: %s (further %d answers are not reported)",
                self.command,
                self.path,
                refused.status,
                refused.message,
                refused.status,
            )
        body = _encode(Status(code=_GRPC_CODES[refused.status], message=refused.message), content_type)
        self._reply(refused.status, body, content_type, refused.headers)

    def _discard_body(self) -> bool:
        """Reads an unwanted body away, so the client sees the answer instead of a reset connection."""
        header = self.headers.get("Content-Length")
        if header is None and "Transfer-Encoding" not in self.headers:
            return True  # no body
        left = _length(header)
        if left is None or left > _DRAIN_LIMIT:
            return False
        while left > 0:
            try:
                chunk = self.rfile.read(min(left, 1 << 16))
            except OSError:  # the client gave up, or stopped sending for READ_TIMEOUT
                return False
            if not chunk:
                return False
            left -= len(chunk)
        return True

    def _reply(self, status: int, body: bytes, content_type: str, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", JSON if content_type == JSON else PROTOBUF)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def _not_allowed(self) -> None:
        content_type = self.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if self.path.split("?")[0] != PATH:
            refused = _HttpError(404, f"not found; OTLP metrics go to POST {PATH}")
        else:
            refused = _HttpError(405, f"{self.command} is not allowed; use POST", {"Allow": "POST"})
        self._body_read = False
        self._refuse(refused, content_type)

    def do_GET(self) -> None:
        self._not_allowed()

    def do_PUT(self) -> None:
        self._not_allowed()

    def do_DELETE(self) -> None:
        self._not_allowed()

    def do_PATCH(self) -> None:
        self._not_allowed()

    def do_OPTIONS(self) -> None:
        self._not_allowed()

    def do_HEAD(self) -> None:
        self.send_response(404 if self.path.split("?")[0] != PATH else 405)
        self.send_header("Allow", "POST")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        _logger.debug("%s " + format, self.address_string(), *args)


def serve(
    host: str = "127.0.0.1",
    port: int = 4319,
    tracking_uri: str | None = None,
    experiment: str | None = None,
    token: str | None = None,
    max_body: int = MAX_BODY,
    silence: float = SILENCE,
) -> int:
    """Runs the receiver until Ctrl-C or SIGTERM (``tracelet receive``); the exit status: 130 after Ctrl-C, else 0."""
    receiver = Receiver(host, port, tracking_uri, experiment, token, max_body, silence=silence)
    terminated = False

    def stop(signum: int, _frame: object) -> None:
        nonlocal terminated
        terminated = True  # asked to stop (a service manager): an orderly exit
        raise KeyboardInterrupt

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, stop)
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
