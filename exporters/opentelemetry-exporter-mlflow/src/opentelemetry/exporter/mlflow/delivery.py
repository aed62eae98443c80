"""Synchronous delivery of :class:`~opentelemetry.exporter.mlflow.mapping.RunBatch` es into MLflow.

:class:`MlflowWriter` is shared by the in-process exporter (on its sender thread) and tracelet's
OTLP receiver (on its request threads). It talks REST to ``http(s)://`` tracking servers with one
keep-alive ``requests.Session`` and JSON built by hand (MLflow's own client would cost a 3 s,
170 MB ``import mlflow`` per training process and a request per point unless batched); other URIs
(``sqlite:///...``, ``postgresql://...``, ``databricks``) go through MLflow's tracking store,
which needs the full ``mlflow`` package.
"""

from __future__ import annotations

import configparser
import contextlib
import json
import logging
import math
import os
import threading
import time
from collections import deque
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from opentelemetry.exporter.mlflow.mapping import INSTANCE_ID, RunBatch, RunKey

_logger = logging.getLogger(__name__)

MAX_METRICS = 1000
MAX_PARAMS = 100
MAX_TAGS = 100
MAX_ENTITIES = 1000
DEFAULT_EXPERIMENT_ID = "0"
# What MLflow's UI reads to show an experiment as model training (its runs, metrics and charts)
# rather than as a GenAI app (traces, latency, tokens); MLflow's own experiment-type selector
# writes the same tag. Set only on experiments this writer creates: an existing one keeps its kind.
EXPERIMENT_KIND = "mlflow.experimentKind"
TRAINING_EXPERIMENT = "custom_model_development"
STATUSES = frozenset({"FINISHED", "FAILED", "KILLED", "RUNNING", "SCHEDULED"})

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_HTTP = ("http", "https")
# MLflow error codes that mean "later", whatever the transport.
_RETRYABLE_CODES = frozenset(
    {"INTERNAL_ERROR", "TEMPORARILY_UNAVAILABLE", "REQUEST_LIMIT_EXCEEDED", "DEADLINE_EXCEEDED", "ABORTED"}
)


class MlflowUnavailable(Exception):  # noqa: N818 - reads as a condition, like TimeoutError
    """MLflow cannot take the batch now: down, 5xx, 429, timeout, credentials refused.

    Nothing is lost by retrying: send the same batch again later (see :class:`MlflowWriter`).
    """


class MlflowCredentialsRefused(MlflowUnavailable):
    """MLflow answered 401 or 403: the credentials are missing or wrong. Retrying cannot help until they are fixed.

    A subclass of :class:`MlflowUnavailable` (nothing is lost: the batch can be sent again once the
    credentials are right); the exporter spools instead of retrying.
    """


class MlflowExperimentDeleted(MlflowUnavailable):
    """The experiment a batch names is deleted in MLflow: it can be stored once the experiment is restored.

    The exporter waits (its points are its own); tracelet's receiver refuses that run's points alone,
    so that one deleted experiment does not hold up every other job's points behind it.
    """


CREDENTIALS_HELP = (
    "set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (basic auth) or MLFLOW_TRACKING_TOKEN (bearer token) "
    "to credentials this server accepts"
)


class MlflowRejected(Exception):  # noqa: N818
    """MLflow refused a request for its content; retrying the same request cannot succeed."""

    def __init__(self, code: str, message: str, status: int | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.status = status


def default_tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI``, else MLflow 3's own default: ``sqlite:///mlflow.db`` in the working directory."""
    uri = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    return uri or f"sqlite:///{Path('mlflow.db').resolve()}"


def check_tracking_uri(uri: str) -> str:
    """Raises ``ValueError`` for a URI MLflow cannot use, so the mistake shows at construction."""
    if not isinstance(uri, str) or not uri.strip():
        raise ValueError(f"tracking_uri must be a non-empty MLflow tracking URI, got {uri!r}")
    uri = uri.strip()
    scheme = urlsplit(uri).scheme
    if scheme in _HTTP:
        if not urlsplit(uri).hostname:
            raise ValueError(f"tracking_uri {uri!r} has no host")
        return uri
    # MLflow 3 refuses the file store unless asked; say so now rather than on the sender thread.
    if scheme in ("", "file") and os.environ.get("MLFLOW_ALLOW_FILE_STORE", "").lower() not in ("1", "true"):
        raise ValueError(
            f"tracking_uri {uri!r} is a file store, which MLflow 3 refuses; use sqlite:///path/mlflow.db "
            "or an http(s):// tracking server"
        )
    return uri


def public_uri(uri: str) -> str:
    """The URI without embedded credentials, fit for logs and spool files."""
    parts = urlsplit(uri)
    if parts.scheme in _HTTP and (parts.username or parts.password):
        host = parts.hostname or ""
        if parts.port:
            host = f"{host}:{parts.port}"
        return parts._replace(netloc=host).geturl()
    return uri


# Packing ----------------------------------------------------------------------------------------


def take(queue: deque[RunBatch]) -> RunBatch:
    """Removes one request's worth of rows from the head of ``queue`` (consecutive batches of one run).

    Batches are consumed in order, so every metric keeps its order; a partly taken head batch stays
    at the head with what is left. Limits are MLflow's ``log-batch`` limits. A param whose value
    differs from one already in the request ends it (MLflow would refuse the whole request).
    """
    head = queue[0]
    out = RunBatch(head.run)
    room = MAX_ENTITIES
    while queue and room:
        batch = queue[0]
        if batch.run != out.run:
            break
        if batch.params:
            if any(out.params.get(k, v) != v for k, v in batch.params.items()):
                break
            for key in list(batch.params):
                if room == 0 or len(out.params) >= MAX_PARAMS:
                    break
                out.params[key] = batch.params.pop(key)
                room -= 1
        if batch.tags and not batch.params:
            for key in list(batch.tags):
                if key not in out.tags and (room == 0 or len(out.tags) >= MAX_TAGS):
                    break
                if key not in out.tags:
                    room -= 1
                out.tags[key] = batch.tags.pop(key)
        if not batch.params and not batch.tags and batch.metrics:
            n = min(MAX_METRICS - len(out.metrics), room)
            if n >= len(batch.metrics):
                out.metrics.extend(batch.metrics)
                room -= len(batch.metrics)
                batch.metrics = []
            elif n > 0:
                out.metrics.extend(batch.metrics[:n])
                del batch.metrics[:n]
                room -= n
        if batch:
            break
        queue.popleft()
    return out


def chunks(batch: RunBatch) -> list[RunBatch]:
    """``batch`` cut into request-sized batches, without touching ``batch``."""
    queue = deque([RunBatch(batch.run, list(batch.metrics), dict(batch.params), dict(batch.tags))])
    out = []
    while queue:
        out.append(take(queue))
    return out


def _halves(batch: RunBatch) -> tuple[RunBatch, RunBatch]:
    entities: list[tuple[str, Any]] = [("p", kv) for kv in batch.params.items()]
    entities += [("t", kv) for kv in batch.tags.items()]
    entities += [("m", m) for m in batch.metrics]
    middle = len(entities) // 2
    out = []
    for part in (entities[:middle], entities[middle:]):
        half = RunBatch(batch.run)
        for kind, item in part:
            if kind == "p":
                half.params[item[0]] = item[1]
            elif kind == "t":
                half.tags[item[0]] = item[1]
            else:
                half.metrics.append(item)
        out.append(half)
    return out[0], out[1]


def _size(batch: RunBatch) -> int:
    return len(batch.metrics) + len(batch.params) + len(batch.tags)


# Transports -------------------------------------------------------------------------------------


def _number(value: float) -> str:
    value = float(value)  # an int or numpy scalar must not become invalid JSON (``True``)
    if math.isfinite(value):
        return repr(value)
    if value != value:
        return '"NaN"'
    return '"Infinity"' if value > 0 else '"-Infinity"'


class _Rest:
    """MLflow's REST API over one keep-alive session, authenticated like MLflow's own client."""

    def __init__(self, uri: str, timeout: float) -> None:
        import requests  # noqa: PLC0415 - keeps `import opentelemetry.exporter.mlflow` light

        self._requests = requests
        self.base = uri.rstrip("/") + "/api/2.0/mlflow/"
        self.timeout = (min(timeout, 5.0), timeout)
        self.session = requests.Session()
        self.session.headers["Content-Type"] = "application/json"
        self.session.headers["User-Agent"] = "opentelemetry-exporter-mlflow"
        username, password = _credentials()
        token = os.environ.get("MLFLOW_TRACKING_TOKEN")
        if username and password:
            self.session.auth = (username, password)
        elif token:
            self.session.headers["Authorization"] = f"Bearer {token}"
        self._authenticated = bool((username and password) or token)
        if _truthy(os.environ.get("MLFLOW_TRACKING_INSECURE_TLS")):
            self.session.verify = False
        elif os.environ.get("MLFLOW_TRACKING_SERVER_CERT_PATH"):
            self.session.verify = os.environ["MLFLOW_TRACKING_SERVER_CERT_PATH"]
        if os.environ.get("MLFLOW_TRACKING_CLIENT_CERT_PATH"):
            self.session.cert = os.environ["MLFLOW_TRACKING_CLIENT_CERT_PATH"]
        self._keys: dict[str, str] = {}

    def call(self, method: str, endpoint: str, body: str | None = None, params: Mapping | None = None) -> Any:
        url = self.base + endpoint
        try:
            response = self.session.request(
                method, url, data=body.encode() if body is not None else None, params=params, timeout=self.timeout
            )
        except self._requests.Timeout:
            raise MlflowUnavailable(f"no answer within {self.timeout[1]:g} s") from None
        except self._requests.RequestException as exc:
            raise MlflowUnavailable(f"cannot connect: {_root_cause(exc)}") from None
        status = response.status_code
        if status < 300:
            if not response.content:
                return {}
            try:
                return response.json()
            except ValueError:  # a login page or a proxy answering 200 in front of MLflow
                kind = response.headers.get("Content-Type", "no content type")
                raise MlflowUnavailable(
                    f"HTTP {status} from {public_uri(url)} is not an MLflow answer ({kind}: "
                    f"{response.text[:80]!r}); is a login page or a proxy in front of the tracking server?"
                ) from None
        if status in (401, 403):
            given = "no credentials were sent" if not self._authenticated else "the credentials sent were refused"
            raise MlflowCredentialsRefused(f"HTTP {status} from {public_uri(url)}: {given}; {CREDENTIALS_HELP}")
        if status >= 500 or status in (408, 429):
            raise MlflowUnavailable(f"HTTP {status} from {public_uri(url)}: {response.text[:300]}")
        try:
            error = response.json()
            code, message = str(error["error_code"]), str(error.get("message", ""))
        except (ValueError, KeyError, TypeError):
            raise MlflowUnavailable(
                f"HTTP {status} from {public_uri(url)} without an MLflow error; is this an MLflow tracking server?"
            ) from None
        if code in _RETRYABLE_CODES:
            raise MlflowUnavailable(f"{code} from {public_uri(url)}: {message}")
        raise MlflowRejected(code, message, status)

    def experiment(self, name: str) -> tuple[str, bool]:
        """Id and whether it is active."""
        found = self.call("GET", "experiments/get-by-name", params={"experiment_name": name})["experiment"]
        return found["experiment_id"], found.get("lifecycle_stage", "active") == "active"

    def create_experiment(self, name: str) -> str:
        body = {"name": name, "tags": [{"key": EXPERIMENT_KIND, "value": TRAINING_EXPERIMENT}]}
        return self.call("POST", "experiments/create", json.dumps(body))["experiment_id"]

    def run_info(self, run_id: str) -> tuple[str, str, str | None]:
        """Lifecycle stage, experiment id and name of a run."""
        info = self.call("GET", "runs/get", params={"run_id": run_id})["run"]["info"]
        return info.get("lifecycle_stage", "active"), info["experiment_id"], info.get("run_name")

    def find_runs(self, experiment_id: str, instance_id: str) -> list[tuple[int, str, str | None]]:
        body = {
            "experiment_ids": [experiment_id],
            "filter": _run_filter(instance_id),
            "run_view_type": "ACTIVE_ONLY",
            "max_results": 1000,
        }
        runs = self.call("POST", "runs/search", json.dumps(body)).get("runs") or []
        return [(int(r["info"].get("start_time") or 0), r["info"]["run_id"], r["info"].get("run_name")) for r in runs]

    def delete_run(self, run_id: str) -> None:
        self.call("POST", "runs/delete", json.dumps({"run_id": run_id}))

    def create_run(self, experiment_id: str, name: str | None, tags: Mapping[str, str], start_ms: int) -> str:
        body: dict[str, Any] = {
            "experiment_id": experiment_id,
            "start_time": start_ms,
            "tags": [{"key": k, "value": v} for k, v in tags.items()],
        }
        if name:
            body["run_name"] = name
        if tags.get("mlflow.user"):
            body["user_id"] = tags["mlflow.user"]
        return self.call("POST", "runs/create", json.dumps(body))["run"]["info"]["run_id"]

    def update_run(self, run_id: str, status: str, end_ms: int) -> None:
        self.call("POST", "runs/update", json.dumps({"run_id": run_id, "status": status, "end_time": end_ms}))

    def log_batch(self, run_id: str, batch: RunBatch) -> None:
        keys = self._keys
        parts = []
        for key, value, timestamp, step in batch.metrics:
            encoded = keys.get(key)
            if encoded is None:
                encoded = keys[key] = json.dumps(key)
                if len(keys) > 100_000:
                    keys.clear()
            parts.append(f'{{"key":{encoded},"value":{_number(value)},"timestamp":{timestamp},"step":{step}}}')
        body = f'{{"run_id":{json.dumps(run_id)},"metrics":[{",".join(parts)}]'
        if batch.params:
            body += ',"params":' + json.dumps([{"key": k, "value": v} for k, v in batch.params.items()])
        if batch.tags:
            body += ',"tags":' + json.dumps([{"key": k, "value": v} for k, v in batch.tags.items()])
        self.call("POST", "runs/log-batch", body + "}")

    def close(self) -> None:
        self.session.close()


class _Store:
    """MLflow's tracking store (``sqlite:///`` and every other non-HTTP URI); needs full ``mlflow``."""

    def __init__(self, uri: str) -> None:
        try:
            from mlflow.entities import ExperimentTag, Metric, Param, RunStatus, RunTag, ViewType  # noqa: PLC0415 - 3 s
            from mlflow.exceptions import MlflowException  # noqa: PLC0415
            from mlflow.tracking._tracking_service.utils import _get_store  # noqa: PLC0415
        except ImportError as exc:
            raise RuntimeError(
                f"the tracking URI {uri!r} needs the full mlflow package "
                "(pip install 'opentelemetry-exporter-mlflow[embedded]'), or use an http(s):// tracking server"
            ) from exc
        self._entities = (Metric, Param, RunTag)
        self._experiment_tag = ExperimentTag
        self._active_only = ViewType.ACTIVE_ONLY
        self._status = RunStatus.from_string
        self._mlflow_exception = MlflowException
        self.store = self._guard(_get_store, uri)

    def _guard(self, function: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return function(*args, **kwargs)
        except self._mlflow_exception as exc:
            code = str(getattr(exc, "error_code", "INTERNAL_ERROR"))
            if code in _RETRYABLE_CODES:
                raise MlflowUnavailable(f"{code}: {exc.message}") from None
            raise MlflowRejected(code, str(exc.message)) from None
        except Exception as exc:  # noqa: BLE001 - e.g. sqlite "database is locked": try again later
            raise MlflowUnavailable(f"{type(exc).__name__}: {exc}") from None

    def experiment(self, name: str) -> tuple[str, bool]:
        found = self._guard(self.store.get_experiment_by_name, name)
        if found is None:
            raise MlflowRejected("RESOURCE_DOES_NOT_EXIST", f"Could not find experiment with name {name!r}")
        return found.experiment_id, found.lifecycle_stage == "active"

    def create_experiment(self, name: str) -> str:
        return self._guard(
            self.store.create_experiment, name, tags=[self._experiment_tag(EXPERIMENT_KIND, TRAINING_EXPERIMENT)]
        )

    def run_info(self, run_id: str) -> tuple[str, str, str | None]:
        info = self._guard(self.store.get_run, run_id).info
        return info.lifecycle_stage, info.experiment_id, info.run_name

    def find_runs(self, experiment_id: str, instance_id: str) -> list[tuple[int, str, str | None]]:
        runs = self._guard(
            self.store.search_runs, [experiment_id], _run_filter(instance_id), self._active_only, max_results=1000
        )
        return [(int(r.info.start_time or 0), r.info.run_id, r.info.run_name) for r in runs]

    def delete_run(self, run_id: str) -> None:
        self._guard(self.store.delete_run, run_id)

    def create_run(self, experiment_id: str, name: str | None, tags: Mapping[str, str], start_ms: int) -> str:
        run_tag = self._entities[2]
        run = self._guard(
            self.store.create_run,
            experiment_id=experiment_id,
            user_id=tags.get("mlflow.user", ""),
            start_time=start_ms,
            tags=[run_tag(k, v) for k, v in tags.items()],
            run_name=name,
        )
        return run.info.run_id

    def update_run(self, run_id: str, status: str, end_ms: int) -> None:
        self._guard(self.store.update_run_info, run_id, self._status(status), end_ms, None)

    def log_batch(self, run_id: str, batch: RunBatch) -> None:
        metric, param, run_tag = self._entities
        self._guard(
            self.store.log_batch,
            run_id,
            metrics=[metric(k, float(v), t, s) for k, v, t, s in batch.metrics],
            params=[param(k, v) for k, v in batch.params.items()],
            tags=[run_tag(k, v) for k, v in batch.tags.items()],
        )

    def close(self) -> None:
        pass


def _root_cause(exc: BaseException) -> str:
    """The innermost reason of a requests/urllib3 error ("[Errno 111] Connection refused")."""
    seen = {id(exc)}
    while True:
        inner = getattr(exc, "reason", None)
        if not isinstance(inner, BaseException) and exc.args and isinstance(exc.args[0], BaseException):
            inner = exc.args[0]
        if not isinstance(inner, BaseException) or id(inner) in seen:
            break
        seen.add(id(inner))
        exc = inner
    text = str(exc)
    return text.rsplit(": ", 1)[-1] if "[Errno" in text else text


def _run_filter(instance_id: str) -> str:
    """The runs of a process, by its instance tag. Names are compared in Python: MLflow's filter
    grammar has no escapes, so a name holding both quote characters cannot be searched for."""
    return f"tags.`{INSTANCE_ID}` = {_quote(instance_id)}"


def _quote(value: str) -> str:
    # MLflow's filter grammar has no escapes: pick the quote the value does not contain.
    return f"'{value}'" if "'" not in value else f'"{value.replace(chr(34), "")}"'


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes")


def _credentials() -> tuple[str | None, str | None]:
    """Basic-auth user and password, from the environment or ``~/.mlflow/credentials`` (as MLflow)."""
    username = os.environ.get("MLFLOW_TRACKING_USERNAME")
    password = os.environ.get("MLFLOW_TRACKING_PASSWORD")
    path = Path("~/.mlflow/credentials").expanduser()
    if (not username or not password) and path.is_file():
        config = configparser.ConfigParser()
        config.read(path)
        if "mlflow" in config:
            username = username or config["mlflow"].get("mlflow_tracking_username")
            password = password or config["mlflow"].get("mlflow_tracking_password")
    return username, password


# The writer -------------------------------------------------------------------------------------


class MlflowWriter:
    """Writes :class:`RunBatch` es into MLflow, synchronously; the one place that talks to MLflow.

    Contract of :meth:`write` (the exporter's sender thread and tracelet's OTLP receiver rely on it):

    - it returns once every row of the batch is stored, except rows MLflow refuses for their
      content (a changed param, a step outside int64, ...): those are dropped, each reported once
      (``logging.warning`` with MLflow's reason, per kind and key) and the rest is delivered;
    - it raises :class:`MlflowUnavailable` when MLflow cannot take the batch now (connection refused,
      timeout, HTTP 5xx, 429, a non-MLflow answer, an experiment deleted in MLflow until
      it is restored). Part of the batch may already be stored; sending the same batch again is
      safe, since MLflow stores an identical ``(key, step, timestamp, value)`` once (NaN and
      infinities included), re-logs identical params and overwrites tags. A receiver answers 503
      so the sender retries; for 401/403 it raises the subclass :class:`MlflowCredentialsRefused`,
      which the sender does not retry;
    - it raises :class:`MlflowRejected` when the whole batch can never be stored as addressed (an
      experiment name or run MLflow refuses to create): retrying will not help, the message says why.

    The run is resolved once per :class:`RunKey` and cached: an existing run id (``run.run_id``)
    is attached to; otherwise the experiment (``run.experiment_name``, else ``experiment_id``,
    else the default experiment) is searched for an active run tagged with the
    ``service.instance.id``, else a run is created with the run name and tags of the key. An
    experiment named by the key that does not exist yet is created as a training experiment
    (``mlflow.experimentKind`` = ``custom_model_development``); existing ones are left as they are. A run
    deleted meanwhile is replaced by a new one (reported once). Rows go out in ``runs/log-batch``
    requests of at most 1,000 metrics, 100 params, 100 tags and 1,000 entities, in order. Thread-safe.
    """

    def __init__(
        self, tracking_uri: str | None = None, timeout: float = 10.0, experiment_id: str | None = None
    ) -> None:
        if timeout <= 0:
            raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
        self.tracking_uri = check_tracking_uri(tracking_uri or default_tracking_uri())
        self.experiment_id = experiment_id or os.environ.get("MLFLOW_EXPERIMENT_ID") or None
        scheme = urlsplit(self.tracking_uri).scheme
        plugin_auth = os.environ.get("MLFLOW_TRACKING_AUTH") or _truthy(os.environ.get("MLFLOW_TRACKING_AWS_SIGV4"))
        if scheme in _HTTP and not plugin_auth:
            self._transport: _Rest | _Store = _Rest(self.tracking_uri, timeout)
        else:  # MLflow's store also covers auth plugins on http(s) URIs
            self._transport = _Store(self.tracking_uri)
        self._lock = threading.Lock()
        self._request_timeout = timeout
        self._timed_out: set[tuple[str, str, str | None]] = set()  # creates that may have happened
        self._runs: dict[tuple[RunKey, str | None], str] = {}
        self._experiments: dict[str, str] = {}
        self._reported: set[str] = set()

    # Public API -----------------------------------------------------------------------------

    def write(self, batch: RunBatch, experiment_id: str | None = None) -> None:
        """Stores ``batch`` in its run (see the class docstring for what returning or raising means)."""
        if not batch:
            return
        start_ms = batch.run.start_ms
        if start_ms is None:
            start_ms = min((m[2] for m in batch.metrics), default=None)
        run_id = self.run_id(batch.run, experiment_id, start_ms)
        for chunk in chunks(self._checked(batch)):
            if not chunk:
                continue
            try:
                self._send(run_id, chunk)
            except _RunGoneError as gone:
                run_id = self._replace(batch.run, experiment_id, run_id, gone.reason, start_ms)
                self._send(run_id, chunk)

    def run_id(self, run: RunKey, experiment_id: str | None = None, start_ms: int | None = None) -> str:
        """The MLflow run for ``run``, found or created (cached)."""
        cache = (run, experiment_id)
        found = self._runs.get(cache)
        if found is not None:
            return found
        with self._lock:
            found = self._runs.get(cache)
            if found is None:
                found = self._runs[cache] = self._resolve(run, experiment_id, start_ms, attach=True)
        return found

    def finish(
        self, run: RunKey, status: str = "FINISHED", end_ms: int | None = None, experiment_id: str | None = None
    ) -> bool:
        """Sets the terminal status of ``run`` if it exists in MLflow; returns whether it did.

        Raises :class:`MlflowUnavailable` like :meth:`write`. Never creates a run.
        """
        if status not in STATUSES:
            raise ValueError(f"status must be one of {sorted(STATUSES)}, got {status!r}")
        run_id = self._runs.get((run, experiment_id))
        if run_id is None:
            if run.run_id:
                run_id = run.run_id
            elif run.instance_id:
                try:
                    key = (self._experiment_id(run, experiment_id), run.instance_id, run.run_name)
                    run_id = self._find(key, wait=False)
                except MlflowRejected:
                    run_id = None
            if run_id is None:
                return False
        self._transport.update_run(run_id, status, int(end_ms if end_ms is not None else time.time() * 1000))
        return True

    def find_experiment(self, name: str) -> str | None:
        """The id of the active experiment ``name``, ``None`` if MLflow has none; never creates one."""
        try:
            found, active = self._transport.experiment(name)
        except MlflowRejected as exc:
            if exc.code == "RESOURCE_DOES_NOT_EXIST":
                return None
            raise
        return found if active else None

    def close(self) -> None:
        self._transport.close()

    # Internals ------------------------------------------------------------------------------

    def _report(self, what: str, message: str, *args: object) -> None:
        if what not in self._reported:
            self._reported.add(what)
            _logger.warning(message, *args)

    def _checked(self, batch: RunBatch) -> RunBatch:
        """``batch`` without points MLflow would store wrongly (steps or times outside int64)."""
        bad = [
            m
            for m in batch.metrics
            if type(m[3]) is not int
            or type(m[2]) is not int
            or not (_INT64_MIN <= m[3] <= _INT64_MAX and _INT64_MIN <= m[2] <= _INT64_MAX)
        ]
        if not bad:
            return batch
        metrics = []
        for key, value, timestamp, step in batch.metrics:
            try:
                step, timestamp = int(step), int(timestamp)
            except (TypeError, ValueError, OverflowError):
                step = _INT64_MAX + 1
            if _INT64_MIN <= step <= _INT64_MAX and _INT64_MIN <= timestamp <= _INT64_MAX:
                metrics.append((key, value, timestamp, step))
            else:
                self._report(
                    f"range:{key}",
                    "MLflow cannot store metric %r at step %r, timestamp %r (outside int64); that point is "
                    "dropped and further ones of this metric are not reported",
                    key,
                    step,
                    timestamp,
                )
        return RunBatch(batch.run, metrics, batch.params, batch.tags)

    def _send(self, run_id: str, chunk: RunBatch) -> None:
        """One request; on a refusal, halves until the refused entity is alone, reports it, sends the rest."""
        try:
            self._transport.log_batch(run_id, chunk)
        except MlflowRejected as exc:
            if exc.code == "RESOURCE_DOES_NOT_EXIST" or "must be in the 'active' state" in exc.message:
                raise _RunGoneError(exc.message) from None
            if _size(chunk) <= 1:
                self._refused(chunk, exc)
                return
            first, second = _halves(chunk)
            self._send(run_id, first)
            self._send(run_id, second)

    def _refused(self, chunk: RunBatch, exc: MlflowRejected) -> None:
        if chunk.params:
            kind, key = "param", next(iter(chunk.params))
        elif chunk.tags:
            kind, key = "tag", next(iter(chunk.tags))
        else:
            kind, key = "metric", chunk.metrics[0][0]
        self._report(
            f"refused:{kind}:{key}",
            "MLflow refused %s %r of run %s and did not store it: %s (the rest is delivered; further "
            "refusals of this %s are not reported)",
            kind,
            key,
            chunk.run.run_name or chunk.run.instance_id,
            exc.message,
            kind,
        )

    def _experiment_id(self, run: RunKey, experiment_id: str | None) -> str:
        name = run.experiment_name
        if not name:
            return experiment_id or self.experiment_id or DEFAULT_EXPERIMENT_ID
        found = self._experiments.get(name)
        if found is not None:
            return found
        transport = self._transport
        try:
            found, active = transport.experiment(name)
        except MlflowRejected as exc:
            if exc.code != "RESOURCE_DOES_NOT_EXIST":
                raise
            try:
                found, active = transport.create_experiment(name), True
            except MlflowRejected as again:
                if again.code != "RESOURCE_ALREADY_EXISTS":
                    raise
                found, active = transport.experiment(name)
        if not active:
            raise MlflowExperimentDeleted(
                f"MLflow experiment {name!r} is deleted; restore it (mlflow experiments restore) or delete it "
                "for good (mlflow gc) so that its points can be stored"
            )
        self._experiments[name] = found
        return found

    def _resolve(
        self,
        run: RunKey,
        experiment_id: str | None,
        start_ms: int | None,
        attach: bool,
        like: tuple[str, str | None] | None = None,
    ) -> str:
        """Finds or creates the run; ``like`` = (experiment id, name) of a run being replaced."""
        transport = self._transport
        if run.run_id and attach:
            try:
                stage, experiment, name = transport.run_info(run.run_id)
                if stage == "active":
                    return run.run_id
                like, reason = (experiment, name), "is deleted"
            except MlflowRejected as exc:
                reason = f"cannot be used ({exc.message})"
            self._report(
                f"attach:{run.run_id}",
                "MLflow run %s %s; the points go to a new run instead",
                run.run_id,
                reason,
            )
        if like is not None:
            experiment, name = like[0], run.run_name or like[1]
        else:
            experiment, name = self._experiment_id(run, experiment_id), run.run_name
        if not run.instance_id:
            start = int(start_ms if start_ms is not None else time.time() * 1000)
            return transport.create_run(experiment, name, dict(run.tags), start)
        # Find, else create, then find again: a create that timed out may still have happened (its
        # run shows up later), and two resolvers may create at once. The process's runs of one name
        # converge on the oldest; the empty extras made by retries are deleted.
        key = (experiment, run.instance_id, name)
        found = self._find(key, wait=key in self._timed_out)
        if found:
            return found
        start = int(start_ms if start_ms is not None else time.time() * 1000)
        try:
            created = transport.create_run(experiment, name, dict(run.tags), start)
        except MlflowUnavailable:
            self._timed_out.add(key)
            raise
        self._timed_out.discard(key)
        return self._find(key, wait=False, created=created) or created

    def _find(self, key: tuple[str, str, str | None], wait: bool, created: str | None = None) -> str | None:
        """The oldest active run of ``key`` (experiment, instance, name); deletes ``created`` if it is a duplicate.

        ``wait``: a create for ``key`` timed out, so its run may still appear: look again for up to
        one request timeout before answering that there is none.
        """
        experiment, instance, name = key
        deadline = time.monotonic() + (self._request_timeout if wait else 0.0)
        while True:
            runs = sorted(r for r in self._transport.find_runs(experiment, instance) if r[2] == name or name is None)
            if runs or time.monotonic() >= deadline:
                break
            time.sleep(0.5)
        if not runs:
            return None
        keep = runs[0][1]
        if created is not None and created != keep:
            with contextlib.suppress(MlflowUnavailable, MlflowRejected):
                self._transport.delete_run(created)
            self._report(
                f"duplicate:{created}",
                "MLflow already had run %s for these points (an earlier request that timed out had created it); "
                "the duplicate %s is deleted",
                keep,
                created,
            )
        return keep

    def _replace(self, run: RunKey, experiment_id: str | None, old: str, reason: str, start_ms: int | None) -> str:
        with self._lock:
            cache = (run, experiment_id)
            current = self._runs.get(cache)
            if current is not None and current != old:
                return current
            try:
                like: tuple[str, str | None] | None = self._transport.run_info(old)[1:]
            except MlflowRejected:
                like = None
            new = self._runs[cache] = self._resolve(run, experiment_id, start_ms, attach=False, like=like)
        self._report(
            f"gone:{old}", "MLflow run %s cannot take points any more (%s); they go to new run %s", old, reason, new
        )
        return new


class _RunGoneError(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
