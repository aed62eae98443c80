"""The exporter's ``OTEL_EXPORTER_MLFLOW_*`` settings: read when the argument is not given, the argument winning."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from opentelemetry.exporter.mlflow import MlflowMetricExporter, environment_variables, exporter
from opentelemetry.exporter.mlflow.environment_variables import (
    OTEL_EXPORTER_MLFLOW_EXPORT_TIMEOUT,
    OTEL_EXPORTER_MLFLOW_HANDLE_PROCESS_EXIT,
    OTEL_EXPORTER_MLFLOW_MAX_QUEUE_POINTS,
    OTEL_EXPORTER_MLFLOW_SPOOL_DIR,
    OTEL_EXPORTER_MLFLOW_TIMEOUT,
    SPOOL_DIR_ALIAS,
)
from opentelemetry.exporter.mlflow.spool import default_spool_dir
from opentelemetry.instrumentation.tensorboard.capture import warn_once

URI = "http://127.0.0.1:1"  # nothing is sent: these exporters are never exported through


@pytest.fixture
def installs(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Records each ``lifecycle.install()`` instead of handling this pytest process's SIGTERM."""
    calls: list[bool] = []
    monkeypatch.setattr(exporter.lifecycle, "install", lambda: calls.append(True))
    for name in [*(n for n in vars(environment_variables) if n.startswith("OTEL_EXPORTER_MLFLOW_")), SPOOL_DIR_ALIAS]:
        monkeypatch.delenv(name, raising=False)
    return calls


def test_unset_variables_leave_the_documented_defaults(installs: list[bool], tmp_path: Path) -> None:
    made = MlflowMetricExporter(tracking_uri=URI, spool_dir=tmp_path)
    assert (made.max_queue_points, made.export_timeout, made.request_timeout) == (200_000, 30.0, 10.0)
    assert installs == [True]


def test_variables_set_what_the_arguments_set(
    installs: list[bool], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(OTEL_EXPORTER_MLFLOW_MAX_QUEUE_POINTS, "1234")
    monkeypatch.setenv(OTEL_EXPORTER_MLFLOW_EXPORT_TIMEOUT, "2500")  # milliseconds, as every OTEL_*_TIMEOUT
    monkeypatch.setenv(OTEL_EXPORTER_MLFLOW_TIMEOUT, "750")
    monkeypatch.setenv(OTEL_EXPORTER_MLFLOW_HANDLE_PROCESS_EXIT, "false")
    monkeypatch.setenv(OTEL_EXPORTER_MLFLOW_SPOOL_DIR, str(tmp_path / "spool"))
    made = MlflowMetricExporter(tracking_uri=URI)
    assert (made.max_queue_points, made.export_timeout, made.request_timeout) == (1234, 2.5, 0.75)
    assert made.spool_dir == tmp_path / "spool"
    assert installs == []

    given = MlflowMetricExporter(
        tracking_uri=URI,
        spool_dir=tmp_path / "given",
        max_queue_points=10,
        export_timeout=3,
        request_timeout=4,
        handle_process_exit=True,
    )
    assert (given.max_queue_points, given.export_timeout, given.request_timeout) == (10, 3.0, 4.0)
    assert given.spool_dir == tmp_path / "given"
    assert installs == [True]


def test_the_spool_dir_alias_works_and_the_otel_name_wins(
    installs: list[bool], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(SPOOL_DIR_ALIAS, str(tmp_path / "alias"))
    assert default_spool_dir() == tmp_path / "alias"
    monkeypatch.setenv(OTEL_EXPORTER_MLFLOW_SPOOL_DIR, str(tmp_path / "otel"))
    assert default_spool_dir() == tmp_path / "otel"
    assert MlflowMetricExporter(tracking_uri=URI, handle_process_exit=False).spool_dir == tmp_path / "otel"


def test_a_bad_value_warns_naming_the_variable_and_the_default_applies(
    installs: list[bool], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    seen: set[str] = warn_once.__self__._seen  # type: ignore[attr-defined]
    seen.difference_update({key for key in seen if key.startswith("env:OTEL_EXPORTER_MLFLOW_")})
    monkeypatch.setenv(OTEL_EXPORTER_MLFLOW_MAX_QUEUE_POINTS, "lots")
    monkeypatch.setenv(OTEL_EXPORTER_MLFLOW_TIMEOUT, "-1")
    monkeypatch.setenv(OTEL_EXPORTER_MLFLOW_HANDLE_PROCESS_EXIT, "perhaps")
    with caplog.at_level(logging.WARNING):
        made = MlflowMetricExporter(tracking_uri=URI, spool_dir=tmp_path)
    assert (made.max_queue_points, made.request_timeout) == (200_000, 10.0)
    assert installs == [True]
    said = " ".join(record.getMessage() for record in caplog.records)
    named = (
        OTEL_EXPORTER_MLFLOW_MAX_QUEUE_POINTS,
        OTEL_EXPORTER_MLFLOW_TIMEOUT,
        OTEL_EXPORTER_MLFLOW_HANDLE_PROCESS_EXIT,
    )
    for name in named:
        assert f"{name}=" in said, said


def test_tracelet_names_are_read_as_aliases_and_the_otel_name_wins(
    installs: list[bool], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    assert environment_variables.ALIASES == {OTEL_EXPORTER_MLFLOW_SPOOL_DIR: (SPOOL_DIR_ALIAS,)}
    name, alias = OTEL_EXPORTER_MLFLOW_SPOOL_DIR, SPOOL_DIR_ALIAS
    monkeypatch.delenv(alias, raising=False)
    monkeypatch.setenv(alias, str(tmp_path / "alias"))
    assert MlflowMetricExporter(tracking_uri=URI).spool_dir == tmp_path / "alias"
    monkeypatch.setenv(name, str(tmp_path / "otel"))
    assert MlflowMetricExporter(tracking_uri=URI).spool_dir == tmp_path / "otel"
    monkeypatch.setenv(name, "  ")  # blank counts as unset
    assert MlflowMetricExporter(tracking_uri=URI).spool_dir == tmp_path / "alias"


def test_bad_values_never_stop_an_import_and_are_reported_once_at_construction(tmp_path: Path) -> None:
    import subprocess  # noqa: PLC0415
    import sys  # noqa: PLC0415

    from support.env import subprocess_env  # noqa: PLC0415

    script = (
        "import logging, opentelemetry.exporter.mlflow as m\n"
        "logging.basicConfig(level=logging.WARNING, format='%(message)s')\n"
        "print('imported', flush=True)\n"
        f"for _ in range(2): m.MlflowMetricExporter(tracking_uri={URI!r}, spool_dir={str(tmp_path)!r})\n"
    )
    env = subprocess_env(
        **{
            OTEL_EXPORTER_MLFLOW_MAX_QUEUE_POINTS: "lots",
            OTEL_EXPORTER_MLFLOW_EXPORT_TIMEOUT: "soon",
            OTEL_EXPORTER_MLFLOW_HANDLE_PROCESS_EXIT: "perhaps",
        }
    )
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout == "imported\n", done.stderr
    for name in (
        OTEL_EXPORTER_MLFLOW_MAX_QUEUE_POINTS,
        OTEL_EXPORTER_MLFLOW_EXPORT_TIMEOUT,
        OTEL_EXPORTER_MLFLOW_HANDLE_PROCESS_EXIT,
    ):
        assert done.stderr.count(f"{name}=") == 1, done.stderr  # one message per variable, two exporters made
    assert "Traceback" not in done.stderr
