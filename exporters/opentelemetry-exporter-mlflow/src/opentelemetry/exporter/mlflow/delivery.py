"""Synchronous delivery into MLflow, in one import: the writer and what its callers need beside it.

The pieces live in modules named after what they hold; this module gathers the names their callers
(the sender, ``upload``, tracelet's OTLP receiver and ``tracelet import``) have always imported from here:

- :mod:`~opentelemetry.exporter.mlflow.writer`: :class:`MlflowWriter`, runs found or created,
  refused rows isolated, params and tags MLflow acknowledged;
- :mod:`~opentelemetry.exporter.mlflow.batching`: rows packed into ``runs/log-batch`` requests;
- :mod:`~opentelemetry.exporter.mlflow.transport`: REST or MLflow's tracking store, the only code
  that speaks to MLflow;
- :mod:`~opentelemetry.exporter.mlflow.errors`: the exceptions and the one classification of failures;
- :mod:`~opentelemetry.exporter.mlflow.retry`: the one retry policy;
- :mod:`~opentelemetry.exporter.mlflow.tracking_uri`: which tracking URIs are accepted, and how one is shown.
"""

from __future__ import annotations

from opentelemetry.exporter.mlflow.batching import MAX_ENTITIES, MAX_METRICS, MAX_PARAMS, MAX_TAGS, chunks, take
from opentelemetry.exporter.mlflow.errors import (
    CREDENTIALS_HELP,
    Failure,
    MlflowCredentialsRefused,
    MlflowExperimentDeleted,
    MlflowRejected,
    MlflowUnavailable,
    classify,
)
from opentelemetry.exporter.mlflow.retry import RETRY, RetryPolicy
from opentelemetry.exporter.mlflow.tracking_uri import check_tracking_uri, default_tracking_uri, public_uri
from opentelemetry.exporter.mlflow.transport import EXPERIMENT_KIND, TRAINING_EXPERIMENT, Transport
from opentelemetry.exporter.mlflow.writer import DEFAULT_EXPERIMENT_ID, STATUSES, MlflowWriter

__all__ = [
    "CREDENTIALS_HELP",
    "DEFAULT_EXPERIMENT_ID",
    "EXPERIMENT_KIND",
    "MAX_ENTITIES",
    "MAX_METRICS",
    "MAX_PARAMS",
    "MAX_TAGS",
    "RETRY",
    "STATUSES",
    "TRAINING_EXPERIMENT",
    "Failure",
    "MlflowCredentialsRefused",
    "MlflowExperimentDeleted",
    "MlflowRejected",
    "MlflowUnavailable",
    "MlflowWriter",
    "RetryPolicy",
    "Transport",
    "check_tracking_uri",
    "chunks",
    "classify",
    "default_tracking_uri",
    "public_uri",
    "take",
]
