"""The exporter's own upload command (``opentelemetry-exporter-mlflow upload``) on a real spool and server."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow_readback import T0, Mlflow, unique
from support.env import subprocess_env

from opentelemetry.exporter.mlflow.environment_variables import OTEL_EXPORTER_MLFLOW_SPOOL_DIR, SPOOL_DIR_ALIAS
from opentelemetry.exporter.mlflow.mapping import RunBatch, RunKey
from opentelemetry.exporter.mlflow.spool import Spool, Status

COMMAND = [sys.executable, "-m", "opentelemetry.exporter.mlflow", "upload"]


def _spool_of_a_dead_process(spool_dir: Path, uri: str, experiment: str) -> RunKey:
    """A segment of 100 points, a param and the run's KILLED status, as a process that is gone left it."""
    spool = Spool(spool_dir, uri)
    spool.prefix = f"{time.time_ns():020d}-99999"
    run = RunKey("instance-upload", experiment, "uploaded", tags=(("service.instance.id", "instance-upload"),))
    rows = [("loss", step / 10, (T0 + step) * 1000, step) for step in range(100)]
    spool.write([RunBatch(run, rows, {"lr": "0.1"}), Status(run, "KILLED", (T0 + 100) * 1000)])
    spool.release()
    return run


def _upload(*arguments: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*COMMAND, *arguments], env=subprocess_env(**env), capture_output=True, text=True, timeout=300
    )


@pytest.mark.parametrize("where", ["--spool-dir", OTEL_EXPORTER_MLFLOW_SPOOL_DIR, SPOOL_DIR_ALIAS])
def test_upload_sends_a_spool_once_and_names_itself(mlflow_server, tmp_path: Path, where: str) -> None:
    experiment = unique("upload-command")
    spool_dir = tmp_path / "spool"
    _spool_of_a_dead_process(spool_dir, mlflow_server.uri, experiment)
    arguments = ["--spool-dir", str(spool_dir)] if where == "--spool-dir" else []
    env = {"MLFLOW_TRACKING_URI": mlflow_server.uri}
    if where != "--spool-dir":
        env[where] = str(spool_dir)
    done = _upload(*arguments, **env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "opentelemetry-exporter-mlflow upload: sent 100 points from 1 segment(s)" in done.stdout
    assert "tracelet" not in done.stdout + done.stderr
    assert not list(spool_dir.glob("*.jsonl"))

    mlflow = Mlflow(mlflow_server.uri)
    run = mlflow.only_run(experiment)
    assert run["info"]["status"] == "KILLED" and run["info"]["run_name"] == "uploaded"
    assert mlflow.params(run) == {"lr": "0.1"}
    assert mlflow.history(run["info"]["run_id"], "loss") == [(s, s / 10, (T0 + s) * 1000) for s in range(100)]

    again = _upload(*arguments, **env)
    assert again.returncode == 0 and "nothing to upload" in again.stdout


def test_upload_keeps_the_spool_and_exits_1_while_mlflow_is_down(tmp_path: Path) -> None:
    from support.process import free_port  # noqa: PLC0415

    spool_dir = tmp_path / "spool"
    down = f"http://127.0.0.1:{free_port()}"
    _spool_of_a_dead_process(spool_dir, down, unique("upload-down"))
    done = _upload("--spool-dir", str(spool_dir), "--tracking-uri", down, "--retry-for", "0")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "opentelemetry-exporter-mlflow upload: MLflow at" in done.stdout and "is unavailable" in done.stdout
    assert len(list(spool_dir.glob("*.jsonl"))) == 1


def test_a_mistake_in_the_command_line_exits_2(tmp_path: Path) -> None:
    done = _upload("--no-such-option")
    assert done.returncode == 2 and "opentelemetry-exporter-mlflow" in done.stderr
