"""tracelet's settings: ``start_logging`` arguments over a ``TraceletSettings`` object over ``TRACELET_*`` variables.

Every field can be set in the environment with the ``TRACELET_`` prefix (``TRACELET_PROJECT``,
``TRACELET_BACKEND=mlflow,prometheus``, ``TRACELET_EXPORT_INTERVAL=2``); values given in code win.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

BACKENDS = ("mlflow", "otlp", "prometheus", "console")


class TraceletSettings(BaseSettings):
    """Where a training run's metrics go and how they are named there."""

    model_config = SettingsConfigDict(env_prefix="TRACELET_", extra="forbid", validate_assignment=True)

    project: str | None = Field(None, description="the MLflow experiment (default: MLFLOW_EXPERIMENT_NAME or MLflow's)")
    exp_name: str | None = Field(None, description="the MLflow run name (default: the script's name)")
    backend: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["mlflow"], description=f"one or more of {', '.join(BACKENDS)}"
    )
    tracking_uri: str | None = Field(
        None, description="MLflow tracking URI (default: MLFLOW_TRACKING_URI, else MLflow's)"
    )
    run_id: str | None = Field(None, description="log into this existing MLflow run instead of a new one")
    spool_dir: Path | None = Field(None, description="where the MLflow exporter keeps points it could not send yet")
    otlp_endpoint: str | None = Field(
        None, description="OTLP/HTTP endpoint, e.g. http://127.0.0.1:4318 (default: OTEL_EXPORTER_OTLP_* variables)"
    )
    prometheus_port: int = Field(9464, ge=0, le=65535, description="port of the /metrics endpoint on 127.0.0.1")
    export_interval: float | None = Field(
        None,
        gt=0,
        description="seconds between two exports of the push backends (default 0.5 for mlflow and otlp, whose "
        "exporters run in a helper process, 5 otherwise; a killed job loses about that, and TensorBoard's own file "
        "keeps it for tracelet import)",
    )
    patch_tensorboard: bool = Field(True, description="capture SummaryWriter calls")
    system_metrics: bool = Field(
        False, description="also sample process, host and GPU metrics into the same backends (system/... in MLflow)"
    )
    system_metrics_interval: float = Field(10.0, gt=0, description="seconds between two system metric samples")

    @field_validator("tracking_uri")
    @classmethod
    def _usable_uri(cls, value: str | None) -> str | None:
        # Checked here, so start_logging refuses a bad URI before it stops a running experiment.
        if value is None:
            return value
        from opentelemetry.exporter.mlflow.delivery import check_tracking_uri  # noqa: PLC0415

        return check_tracking_uri(value)

    @field_validator("backend", mode="before")
    @classmethod
    def _backend_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = value.split(",")
        if isinstance(value, (list, tuple)):
            names = [str(name).strip().lower() for name in value if str(name).strip()]
            unknown = [name for name in names if name not in BACKENDS]
            if unknown:
                raise ValueError(
                    f"unknown backend {', '.join(map(repr, unknown))}; valid backends: {', '.join(BACKENDS)}"
                )
            if not names:
                raise ValueError(f"no backend given; valid backends: {', '.join(BACKENDS)}")
            return list(dict.fromkeys(names))
        return value


def resolve(settings: TraceletSettings | None, *layers: Mapping[str, Any] | None) -> TraceletSettings:
    """``settings`` (or the environment) with each layer's values on top, later layers winning.

    Raises ``ValueError`` naming the setting that is wrong or unknown.
    """
    values = (settings if settings is not None else _from_env()).model_dump()
    fields = TraceletSettings.model_fields
    for layer in layers:
        for key, value in (layer or {}).items():
            if key not in fields:
                raise ValueError(f"unknown tracelet setting {key!r}; known settings: {', '.join(fields)}")
            values[key] = value
    try:
        return TraceletSettings(**values)
    except ValidationError as exc:
        raise ValueError(f"invalid tracelet settings: {_describe(exc)}") from None


def _from_env() -> TraceletSettings:
    try:
        return TraceletSettings()
    except ValidationError as exc:
        raise ValueError(f"invalid TRACELET_* environment variable: {_describe(exc)}") from None


def _describe(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(map(str, error['loc'])) or 'settings'}: {error['msg'].removeprefix('Value error, ')}"
        for error in exc.errors()
    )
