"""The environment child processes of the tests run in."""

from __future__ import annotations

import os


def subprocess_env(**extra: str) -> dict[str, str]:
    """This environment without OpenTelemetry, MLflow or tracelet settings, plus ``extra``.

    A child must not inherit what the developer's shell or another test exported.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "MLFLOW_", "TRACELET_"))}
    env.update(extra)
    return env
