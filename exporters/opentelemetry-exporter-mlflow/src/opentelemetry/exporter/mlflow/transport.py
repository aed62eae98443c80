"""The only place that speaks to MLflow: its REST API over HTTP, or its tracking store.

:class:`Transport` is what :class:`~opentelemetry.exporter.mlflow.writer.MlflowWriter` needs from
MLflow, one method per call. :class:`RestTransport` talks REST to ``http(s)://`` tracking servers
with one keep-alive ``requests.Session`` and JSON built by hand (MLflow's own client would cost a
3 s, 170 MB ``import mlflow`` per process and a request per point unless batched), authenticated as
MLflow's own client is. :class:`StoreTransport` uses MLflow's tracking store for every other URI
(``sqlite:///...``, ``postgresql://...``, ``databricks``) and for auth plugins; it needs the full
``mlflow`` package. :func:`transport_for` picks one.

Both raise only :mod:`~opentelemetry.exporter.mlflow.errors`' exceptions for what MLflow or the
network did, as :func:`~opentelemetry.exporter.mlflow.errors.classify` decides; an unexpected
exception passes through as it is.
"""

from __future__ import annotations

import configparser
import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

from opentelemetry.exporter.mlflow.errors import (
    CREDENTIALS_HELP,
    Failure,
    HttpAnswer,
    MlflowCredentialsRefused,
    MlflowRejected,
    MlflowUnavailable,
    classify,
)
from opentelemetry.exporter.mlflow.mapping import INSTANCE_ID, RunBatch
from opentelemetry.exporter.mlflow.tracking_uri import HTTP_SCHEMES, public_uri

# What MLflow's UI reads to show an experiment as model training (its runs, metrics and charts)
# rather than as a GenAI app (traces, latency, tokens); MLflow's own experiment-type selector
# writes the same tag. Set only on experiments this writer creates: an existing one keeps its kind.
EXPERIMENT_KIND = "mlflow.experimentKind"
TRAINING_EXPERIMENT = "custom_model_development"


class Transport(Protocol):
    """MLflow's calls the writer makes. Each raises :class:`MlflowUnavailable` (or its subclass
    :class:`MlflowCredentialsRefused`) when MLflow cannot answer now, :class:`MlflowRejected` when it
    refuses the content."""

    def experiment(self, name: str) -> tuple[str, bool]:
        """Id of experiment ``name`` and whether it is active; :class:`MlflowRejected` ``RESOURCE_DOES_NOT_EXIST``."""
        ...

    def create_experiment(self, name: str) -> str:
        """A new training experiment's id."""
        ...

    def run_info(self, run_id: str) -> tuple[str, str, str | None]:
        """Lifecycle stage, experiment id and name of a run."""
        ...

    def find_runs(self, experiment_id: str, instance_id: str) -> list[tuple[int, str, str | None]]:
        """(start ms, run id, run name) of the active runs tagged with ``instance_id``."""
        ...

    def delete_run(self, run_id: str) -> None: ...

    def create_run(self, experiment_id: str, name: str | None, tags: Mapping[str, str], start_ms: int) -> str:
        """A new run's id."""
        ...

    def update_run(self, run_id: str, status: str, end_ms: int) -> None: ...

    def log_batch(self, run_id: str, batch: RunBatch) -> None:
        """Stores one request-sized batch (within MLflow's ``log-batch`` limits)."""
        ...

    def close(self) -> None: ...


def transport_for(uri: str, timeout: float) -> Transport:
    """REST for ``http(s)://`` servers, MLflow's store for other URIs and for auth plugins (which only it knows)."""
    plugin_auth = os.environ.get("MLFLOW_TRACKING_AUTH") or _truthy(os.environ.get("MLFLOW_TRACKING_AWS_SIGV4"))
    if urlsplit(uri).scheme in HTTP_SCHEMES and not plugin_auth:
        return RestTransport(uri, timeout)
    return StoreTransport(uri)


def _number(value: float) -> str:
    value = float(value)  # an int or numpy scalar must not become invalid JSON (``True``)
    if math.isfinite(value):
        return repr(value)
    if value != value:
        return '"NaN"'
    return '"Infinity"' if value > 0 else '"-Infinity"'


class RestTransport:
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
        except Exception as exc:
            if classify(exc) is not Failure.TRANSIENT:
                raise
            if isinstance(exc, self._requests.Timeout):
                raise MlflowUnavailable(f"no answer within {self.timeout[1]:g} s") from None
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
        code, message = _mlflow_error(response)
        failure = classify(HttpAnswer(status, code, message))
        where = public_uri(url)
        if failure is Failure.CREDENTIALS:
            given = "no credentials were sent" if not self._authenticated else "the credentials sent were refused"
            raise MlflowCredentialsRefused(f"HTTP {status} from {where}: {given}; {CREDENTIALS_HELP}")
        if failure is Failure.TRANSIENT:
            if status >= 500 or status in (408, 429):
                raise MlflowUnavailable(f"HTTP {status} from {where}: {response.text[:300]}")
            if code is None:
                raise MlflowUnavailable(
                    f"HTTP {status} from {where} without an MLflow error; is this an MLflow tracking server?"
                )
            raise MlflowUnavailable(f"{code} from {where}: {message}")
        raise MlflowRejected(str(code), message, status)

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


class StoreTransport:
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
        except Exception as exc:
            failure = classify(exc)
            if isinstance(exc, self._mlflow_exception):
                code, message = str(getattr(exc, "error_code", "INTERNAL_ERROR")), str(exc.message)
                if failure is Failure.TRANSIENT:
                    raise MlflowUnavailable(f"{code}: {message}") from None
                if failure is Failure.CREDENTIALS:
                    raise MlflowCredentialsRefused(f"{code}: {message}; {CREDENTIALS_HELP}") from None
                raise MlflowRejected(code, message) from None
            if failure is Failure.TRANSIENT:  # e.g. sqlite "database is locked": try again later
                raise MlflowUnavailable(f"{type(exc).__name__}: {exc}") from None
            raise

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


def _mlflow_error(response: Any) -> tuple[str | None, str]:
    """MLflow's error code and message in an answer, ``(None, "")`` when the answer is not MLflow's."""
    try:
        error = response.json()
        return str(error["error_code"]), str(error.get("message", ""))
    except (ValueError, KeyError, TypeError):
        return None, ""
