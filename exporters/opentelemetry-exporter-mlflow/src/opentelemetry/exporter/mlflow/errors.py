"""What can go wrong when MLflow is asked to store something, and the one rule that says what follows.

Every caller that decides whether to try again (the exporter's sender, ``upload``, the retry loop
of :mod:`~opentelemetry.exporter.mlflow.retry`, tracelet's receiver) decides with :func:`classify`,
so a failure is retried in one place exactly when it is retried in all of them:

- :attr:`Failure.TRANSIENT`: MLflow cannot take it now (connection refused or reset, a timeout,
  HTTP 5xx, 408, 429, an answer that is not MLflow's, MLflow's own "later" error codes, a database
  that is locked or unreachable behind a tracking store). Sending the same rows again later is safe;
- :attr:`Failure.CREDENTIALS`: HTTP 401 or 403 (MLflow's ``UNAUTHENTICATED``,
  ``PERMISSION_DENIED``): waiting cannot fix credentials, so nothing is retried until they are;
- :attr:`Failure.REFUSED`: MLflow refused the content (HTTP 400, a changed param, an experiment name
  it cannot create); the same request can never succeed;
- :attr:`Failure.UNEXPECTED`: any other exception, a bug rather than an outage. It is not retried:
  retrying a bug forever would hide it and hold every later point behind it.

This module imports nothing heavy: ``requests``, SQLAlchemy and ``mlflow`` are recognised only when
they are already imported (a failure of theirs cannot happen otherwise).
"""

from __future__ import annotations

import errno
import sys
from enum import Enum


class Failure(Enum):
    """The kind of a failure, which alone decides what a caller does next (see the module docstring)."""

    TRANSIENT = "transient"
    CREDENTIALS = "credentials"
    REFUSED = "refused"
    UNEXPECTED = "unexpected"


class MlflowUnavailable(Exception):  # noqa: N818 - reads as a condition, like TimeoutError
    """MLflow cannot take the batch now: down, 5xx, 429, timeout, credentials refused.

    Nothing is lost by retrying: send the same batch again later (see
    :class:`~opentelemetry.exporter.mlflow.writer.MlflowWriter`).
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


class MlflowRejected(Exception):  # noqa: N818
    """MLflow refused a request for its content; retrying the same request cannot succeed."""

    def __init__(self, code: str, message: str, status: int | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.status = status


class HttpAnswer(Exception):  # noqa: N818 - an answer, raised only to be classified
    """An HTTP answer that is not a success: its status and, when MLflow sent one, its error code."""

    def __init__(self, status: int, code: str | None = None, message: str = "") -> None:
        super().__init__(f"HTTP {status}: {code or 'no MLflow error'}: {message}")
        self.status = status
        self.code = code
        self.message = message


CREDENTIALS_HELP = (
    "set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (basic auth) or MLFLOW_TRACKING_TOKEN (bearer token) "
    "to credentials this server accepts"
)

# MLflow error codes that mean "later", whatever the transport.
RETRYABLE_CODES = frozenset(
    {"INTERNAL_ERROR", "TEMPORARILY_UNAVAILABLE", "REQUEST_LIMIT_EXCEEDED", "DEADLINE_EXCEEDED", "ABORTED"}
)
CREDENTIALS_CODES = frozenset({"UNAUTHENTICATED", "PERMISSION_DENIED", "CUSTOMER_UNAUTHORIZED"})
_TRANSIENT_STATUSES = frozenset({408, 429})
_NETWORK_ERRNOS = frozenset(
    {errno.ENETUNREACH, errno.EHOSTUNREACH, errno.ENETDOWN, errno.EHOSTDOWN, errno.ECONNABORTED, errno.ETIMEDOUT}
)
# Database failures behind MLflow's tracking store that pass: a locked sqlite file, a restarting server.
_DATABASE_TRANSIENT = ("OperationalError", "InterfaceError", "DisconnectionError", "TimeoutError")


def classify(error: BaseException) -> Failure:
    """The kind of ``error`` (see the module docstring): the one rule for what is retried."""
    if isinstance(error, MlflowCredentialsRefused):
        return Failure.CREDENTIALS
    if isinstance(error, MlflowUnavailable):
        return Failure.TRANSIENT
    if isinstance(error, MlflowRejected):
        return Failure.REFUSED
    if isinstance(error, HttpAnswer):
        return _http(error.status, error.code)
    mlflow_exceptions = sys.modules.get("mlflow.exceptions")
    if mlflow_exceptions is not None and isinstance(error, mlflow_exceptions.MlflowException):
        return _code(str(getattr(error, "error_code", "INTERNAL_ERROR")))
    requests_exceptions = sys.modules.get("requests.exceptions")
    if requests_exceptions is not None and isinstance(error, requests_exceptions.RequestException):
        return Failure.TRANSIENT  # the request did not get an answer: refused, reset, timed out, TLS
    if isinstance(error, (ConnectionError, TimeoutError)):
        return Failure.TRANSIENT
    if isinstance(error, OSError) and error.errno in _NETWORK_ERRNOS:
        return Failure.TRANSIENT
    if _database_transient(error):
        return Failure.TRANSIENT
    return Failure.UNEXPECTED


def _http(status: int, code: str | None) -> Failure:
    if status in (401, 403):
        return Failure.CREDENTIALS
    if status >= 500 or status in _TRANSIENT_STATUSES:
        return Failure.TRANSIENT
    if code is None:  # not MLflow answering (a proxy, a login page): MLflow may answer later
        return Failure.TRANSIENT
    return _code(code)


def _code(code: str) -> Failure:
    if code in RETRYABLE_CODES:
        return Failure.TRANSIENT
    if code in CREDENTIALS_CODES:
        return Failure.CREDENTIALS
    return Failure.REFUSED


def _database_transient(error: BaseException) -> bool:
    """A database error of the kind that passes (SQLAlchemy's, or the sqlite3 driver's own)."""
    for kind in type(error).__mro__:
        module = kind.__module__.split(".", 1)[0]
        if module in ("sqlalchemy", "sqlite3", "psycopg2", "psycopg", "pymysql") and kind.__name__ in (
            _DATABASE_TRANSIENT
        ):
            return True
    return bool(getattr(error, "connection_invalidated", False))
