"""The ``tracelet`` command as a user meets it: one line for a mistake, 130 for Ctrl-C, uploads that can overlap."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from support.env import subprocess_env

from opentelemetry.exporter.mlflow.mapping import RunBatch, RunKey
from opentelemetry.exporter.mlflow.spool import Spool, upload_spool

TRACELET = str(Path(sys.executable).with_name("tracelet"))


def _tracelet(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [TRACELET, *args], cwd=cwd, env=subprocess_env(), capture_output=True, text=True, timeout=120, check=False
    )


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["receive", "--port", "99999"], "must be between 0 and 65535"),
        (["receive", "--max-body", "0"], "must be at least 1"),
        (["receive", "--port", "0", "--tracking-uri", "not a uri"], "tracelet: error:"),
    ],
)
def test_mistakes_get_one_line_and_no_traceback(tmp_path: Path, args: list[str], says: str) -> None:
    done = _tracelet(*args, cwd=tmp_path)
    assert done.returncode == 2
    assert says in done.stderr
    assert "Traceback" not in done.stderr


def test_a_port_in_use_is_a_mistake_too(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = _tracelet("receive", "--port", str(port), "--tracking-uri", f"sqlite:///{tmp_path}/m.db", cwd=tmp_path)
    assert done.returncode == 2
    assert "tracelet: error:" in done.stderr and "Traceback" not in done.stderr


def test_ctrl_c_exits_130(tmp_path: Path) -> None:
    process = subprocess.Popen(
        [TRACELET, "receive", "--port", "0", "--tracking-uri", f"sqlite:///{tmp_path}/m.db"],
        cwd=tmp_path,
        env=subprocess_env(),
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stderr is not None
    for line in process.stderr:  # wait until it listens
        if "OTLP/HTTP on" in line:
            break
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=30) == 130


def test_two_uploads_at_once_send_each_point_once(mlflow_env, tmp_path: Path) -> None:
    experiment = f"two-uploads-{uuid.uuid4().hex[:8]}"
    spool_dir = tmp_path / "spool"
    for process in range(3):  # three dead processes' segments
        spool = Spool(spool_dir, mlflow_env.uri)
        spool.prefix = f"{time.time_ns():020d}-{90000 + process}"
        run = RunKey(
            f"instance-{process}", experiment, f"run-{process}", tags=(("service.instance.id", f"i{process}"),)
        )
        for segment in range(4):
            rows = [
                ("loss", float(step), 1_700_000_000_000 + step, step) for step in range(segment * 50, segment * 50 + 50)
            ]
            spool.write([RunBatch(run, rows)])
        spool.release()
    results: list[int] = []
    outputs: list[str] = []
    threads = [
        threading.Thread(target=lambda: results.append(upload_spool(spool_dir, mlflow_env.uri, say=outputs.append)))
        for _ in range(2)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert len(results) == 2, outputs  # both finished without raising
    assert upload_spool(spool_dir, mlflow_env.uri, say=outputs.append) == 0  # nothing left in the end
    assert not list(spool_dir.glob("*.jsonl"))
    client = MlflowClient(mlflow_env.uri)
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    assert sorted(run.info.run_name for run in runs) == ["run-0", "run-1", "run-2"]
    for run in runs:
        history = client.get_metric_history(run.info.run_id, "loss")
        assert sorted(m.step for m in history) == list(range(200))  # each point once
