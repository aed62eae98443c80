"""How a process that started logging ends: its points delivered, its run FAILED, KILLED or FINISHED."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from mlflow.tracking import MlflowClient

SCRIPT = """
    import sys, time
    import tracelet
    from torch.utils.tensorboard import SummaryWriter

    tracelet.start_logging(exp_name=sys.argv[1], project="exits")
    writer = SummaryWriter(log_dir="runs/train")
    for step in range(30):
        writer.add_scalar("loss", step * 0.5, step)
    if sys.argv[1] == "crash":
        raise RuntimeError("the training step failed")
    if sys.argv[1] == "terminated":
        print("logged", flush=True)
        time.sleep(600)
"""


@pytest.mark.parametrize(("name", "status"), [("normal", "FINISHED"), ("crash", "FAILED"), ("terminated", "KILLED")])
def test_exit_delivers_every_point_and_sets_the_status(mlflow_env: Any, tmp_path: Path, name: str, status: str) -> None:
    script = tmp_path / "train.py"
    script.write_text(textwrap.dedent(SCRIPT))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "TRACELET_"))}
    env.update(TRACELET_SPOOL_DIR=str(tmp_path / "spool"), TRACELET_EXPORT_INTERVAL="60", OMP_NUM_THREADS="1")
    process = subprocess.Popen(
        [sys.executable, str(script), name],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    if name == "terminated":
        assert process.stdout is not None
        assert process.stdout.readline() == "logged\n"
        process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == {"normal": 0, "crash": 1, "terminated": 143}[name], stderr[-3000:]
    if name == "crash":
        assert "RuntimeError: the training step failed" in stderr

    assert not list((tmp_path / "spool").rglob("*.jsonl")), "points were left undelivered"
    client = MlflowClient(tracking_uri=mlflow_env.uri)
    experiment = client.get_experiment_by_name("exits")
    (run,) = client.search_runs([experiment.experiment_id], filter_string=f"attributes.run_name = '{name}'")
    points = sorted((p.step, p.value) for p in client.get_metric_history(run.info.run_id, "train/loss"))
    assert points == [(step, step * 0.5) for step in range(30)]
    assert run.info.status == status
