"""Resource attributes that tie a training process to its MLflow run, read from the environment.

Registered as the ``mlflow`` resource detector (``OTEL_EXPERIMENTAL_RESOURCE_DETECTORS=mlflow``;
the tensorboard distro switches it on), so the run mapping also works when the points reach MLflow
later through a collector and tracelet's OTLP receiver, far from this process's environment.
"""

from __future__ import annotations

import getpass
import os
import sys
import time
from contextlib import suppress
from importlib.metadata import PackageNotFoundError, version

from opentelemetry.sdk.resources import Resource, ResourceDetector

from opentelemetry.exporter.mlflow.mapping import (
    EXPERIMENT_NAME,
    RANK,
    RUN_ID,
    SOURCE_NAME,
    START_TIME,
    USER,
    VERSION,
    WORLD_SIZE,
)
from opentelemetry.exporter.mlflow.version import __version__

_FROM_ENV = (
    ("MLFLOW_EXPERIMENT_NAME", EXPERIMENT_NAME, str),
    ("MLFLOW_RUN_ID", RUN_ID, str),
    ("RANK", RANK, int),
    ("WORLD_SIZE", WORLD_SIZE, int),
)


def source_attributes() -> dict[str, str]:
    """What MLflow's own client records of where a run comes from: the script's path and the user.

    Plus the tracelet version that captured it (the ``tracelet`` distribution's, else this
    package's: they are released together). They travel on the resource, so the receiver at
    the end of the collector route gives its runs the same source, user and description.
    """
    attributes = {VERSION: _version()}
    if sys.argv and sys.argv[0] not in ("", "-c", "-m"):
        attributes[SOURCE_NAME] = os.path.abspath(sys.argv[0])
    with suppress(KeyError, OSError):
        attributes[USER] = getpass.getuser()
    return attributes


def _version() -> str:
    try:
        return version("tracelet")
    except PackageNotFoundError:
        return __version__


class MlflowResourceDetector(ResourceDetector):
    """``MLFLOW_EXPERIMENT_NAME``, ``MLFLOW_RUN_ID``, ``RANK`` and ``WORLD_SIZE`` as attributes.

    Also ``mlflow.run.start_time``: now, in ms. The resource is made when the process starts
    tracking, which is when its MLflow run starts, whatever wall times its points carry. And the
    :func:`source_attributes` (``mlflow.source.name``, ``mlflow.user``, ``tracelet.version``).
    """

    def detect(self) -> Resource:
        attributes: dict[str, str | int] = {START_TIME: int(time.time() * 1000), **source_attributes()}
        for variable, attribute, kind in _FROM_ENV:
            value = os.environ.get(variable, "").strip()
            if value:
                try:
                    attributes[attribute] = kind(value)
                except ValueError:
                    continue
        return Resource(attributes)
