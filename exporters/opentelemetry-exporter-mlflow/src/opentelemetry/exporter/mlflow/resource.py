"""Resource attributes that tie a training process to its MLflow run, read from the environment.

Registered as the ``mlflow`` resource detector (``OTEL_EXPERIMENTAL_RESOURCE_DETECTORS=mlflow``;
the tensorboard distro switches it on), so the run mapping also works when the points reach MLflow
later through a collector and tracelet's OTLP receiver, far from this process's environment.
"""

from __future__ import annotations

import os
import time

from opentelemetry.sdk.resources import Resource, ResourceDetector

from opentelemetry.exporter.mlflow.mapping import EXPERIMENT_NAME, RANK, RUN_ID, START_TIME, WORLD_SIZE

_FROM_ENV = (
    ("MLFLOW_EXPERIMENT_NAME", EXPERIMENT_NAME, str),
    ("MLFLOW_RUN_ID", RUN_ID, str),
    ("RANK", RANK, int),
    ("WORLD_SIZE", WORLD_SIZE, int),
)


class MlflowResourceDetector(ResourceDetector):
    """``MLFLOW_EXPERIMENT_NAME``, ``MLFLOW_RUN_ID``, ``RANK`` and ``WORLD_SIZE`` as attributes.

    Also ``mlflow.run.start_time``: now, in ms. The resource is made when the process starts
    tracking, which is when its MLflow run starts, whatever wall times its points carry.
    """

    def detect(self) -> Resource:
        attributes: dict[str, str | int] = {START_TIME: int(time.time() * 1000)}
        for variable, attribute, kind in _FROM_ENV:
            value = os.environ.get(variable, "").strip()
            if value:
                try:
                    attributes[attribute] = kind(value)
                except ValueError:
                    continue
        return Resource(attributes)
