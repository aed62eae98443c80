"""The one retry policy of MLflow delivery: how long to wait between attempts, and for how long at most.

The exporter's sender, ``upload`` (and ``tracelet import``, through
:func:`~opentelemetry.exporter.mlflow.spool.deliver`) all wait :data:`RETRY`'s delays, so an outage
looks the same from every side: 0.25 s, doubling to 5 s, each shortened by up to half at random so
that many jobs that lost one server do not come back in step. What is retried at all is
:func:`~opentelemetry.exporter.mlflow.errors.classify`'s to say (transient failures only).

It is the policy of :mod:`opentelemetry.instrumentation.tensorboard.retry` (the durable OTLP
exporter's too), with MLflow's classification. A server that answers for MLflow (tracelet's OTLP
receiver) tells its senders when to come back with :meth:`RetryPolicy.retry_after`, the policy's
first delay in whole seconds.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from opentelemetry.exporter.mlflow.errors import Failure, classify
from opentelemetry.instrumentation.tensorboard import retry


def transient(error: BaseException) -> bool:
    """Whether retrying ``error`` can help: an outage, not a refusal or a failure of no known kind."""
    return classify(error) is Failure.TRANSIENT


@dataclass(frozen=True)
class RetryPolicy(retry.RetryPolicy):
    """The shared policy, retrying only :func:`transient` failures."""

    retryable: Callable[[BaseException], bool] = field(default=transient, compare=False, repr=False)


RETRY = RetryPolicy()
"""The policy of every MLflow delivery (without a deadline: callers that give up set their own)."""
