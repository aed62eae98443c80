"""The delivery process: the training process never imports MLflow, and the helper lives and ends with it."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from fractions import Fraction
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from mlflow_readback import T0, Mlflow, unique, wait_for
from support.env import subprocess_env
from support.mlflow_server import MlflowServer

PYTHON = sys.executable
INSTRUMENT = str(Path(sys.executable).with_name("opentelemetry-instrument"))
HEAVY = ("mlflow", "requests", "sqlalchemy")

ZERO_CODE = textwrap.dedent(
    f"""
    import json, math, sys
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter("runs/train")
    for step in range(2_000):
        writer.add_scalar("loss", math.nan if step == 7 else 1 / (step + 1), step, walltime={T0} + step / 1000)
    writer.close()
    print(json.dumps(sorted(name for name in {HEAVY!r} if name in sys.modules)), flush=True)
    """
)

FROM_CODE = textwrap.dedent(
    f"""
    import json, sys
    import tracelet
    from torch.utils.tensorboard import SummaryWriter

    tracelet.start_logging(exp_name="light", backend="mlflow")
    writer = SummaryWriter("runs/train")
    for step in range(500):
        writer.add_scalar("loss", step * 0.5, step)
    tracelet.stop_logging()
    print(json.dumps(sorted(name for name in {HEAVY!r} if name in sys.modules)), flush=True)
    """
)

KILLED = textwrap.dedent(
    """
    import os, sys, time
    import tracelet
    from torch.utils.tensorboard import SummaryWriter

    tracelet.start_logging(exp_name="victim", backend="mlflow", export_interval=0.2)
    writer = SummaryWriter("runs/train")
    for step in range(300):
        writer.add_scalar("loss", step * 0.5, step)
    print(os.getpid(), flush=True)
    time.sleep(600)
    """
)


def _script(tmp_path: Path, text: str, prefix: str, uri: str, **extra: str) -> tuple[str, dict[str, str]]:
    """Writes ``train.py``; returns a fresh experiment name and the environment that points it at MLflow."""
    (tmp_path / "train.py").write_text(text)
    experiment = unique(prefix)
    env = subprocess_env(
        MLFLOW_TRACKING_URI=uri,
        MLFLOW_EXPERIMENT_NAME=experiment,
        TRACELET_SPOOL_DIR=str(tmp_path / "spool"),
        **extra,
    )
    return experiment, env


def _start_victim(tmp_path: Path, prefix: str, uri: str) -> tuple[str, dict[str, str], subprocess.Popen[str], int]:
    """Starts the ``KILLED`` script; returns its experiment, environment, process and pid once it has logged."""
    experiment, env = _script(tmp_path, KILLED, prefix, uri)
    process = subprocess.Popen(
        [PYTHON, "train.py"], cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert process.stdout is not None
    return experiment, env, process, int(process.stdout.readline())


def _upload(spool: Path, env: dict[str, str], uri: str) -> str:
    """``tracelet upload`` of ``spool`` into ``uri``, as a user runs it; returns what it printed."""
    done = subprocess.run(
        [str(Path(PYTHON).with_name("tracelet")), "upload", "--spool-dir", str(spool)],
        env={**env, "MLFLOW_TRACKING_URI": uri},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def _train(tmp_path: Path, env: dict[str, str], *command: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [*command, PYTHON, "train.py"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(child) for child in (task / "children").read_text().split()]
    return found


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return True
    return state == "Z"


@pytest.mark.parametrize("store", ["sqlite", "server"])
def test_zero_code_training_process_imports_no_mlflow(mlflow_env, tmp_path: Path, store: str) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}" if store == "sqlite" else mlflow_env.uri
    experiment, env = _script(tmp_path, ZERO_CODE, "light", uri, OTEL_METRICS_EXPORTER="mlflow")
    done = _train(tmp_path, env, INSTRUMENT)
    assert json.loads(done.stdout.splitlines()[-1]) == []  # none of mlflow, requests, sqlalchemy
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    history = sorted(client.get_metric_history(run.info.run_id, "train/loss"), key=lambda m: m.step)
    assert [m.step for m in history] == list(range(2_000))
    assert history[7].value != history[7].value  # NaN
    # The wall time TensorBoard wrote (a double), floored to the millisecond exactly.
    assert [m.timestamp for m in history] == [math.floor(Fraction(T0 + s / 1000) * 1000) for s in range(2_000)]
    assert run.info.status == "FINISHED"


def test_start_logging_imports_no_mlflow(mlflow_env, tmp_path: Path) -> None:
    experiment, env = _script(tmp_path, FROM_CODE, "light", mlflow_env.uri)
    done = _train(tmp_path, env)
    assert json.loads(done.stdout.splitlines()[-1]) == []
    mlflow = Mlflow(mlflow_env.uri)
    run = mlflow.only_run(experiment)
    assert run["info"]["status"] == "FINISHED"
    assert [row[0] for row in mlflow.history(run["info"]["run_id"], "train/loss")] == list(range(500))


def test_sigkill_of_the_training_process_ends_its_run_killed(mlflow_env, tmp_path: Path) -> None:
    """What reached the helper before the kill is delivered, the run ends KILLED, and the helper exits."""
    experiment, _env, process, pid = _start_victim(tmp_path, "sigkill", mlflow_env.uri)
    mlflow = Mlflow(mlflow_env.uri)

    def delivered() -> int:
        run = mlflow.runs(experiment)
        return len(mlflow.history(run[0]["info"]["run_id"], "train/loss")) if run else 0

    wait_for(lambda: delivered() == 300, what="the points exported before the kill")
    helpers = _children(pid)
    assert len(helpers) == 1
    os.kill(pid, signal.SIGKILL)
    process.wait(timeout=30)
    deadline = time.monotonic() + 60
    while not _gone(helpers[0]) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _gone(helpers[0]), "the delivery process outlived its parent"
    process.communicate(timeout=30)
    run = mlflow.only_run(experiment)
    assert run["info"]["status"] == "KILLED"
    assert [row[0] for row in mlflow.history(run["info"]["run_id"], "train/loss")] == list(range(300))


FORKED = textwrap.dedent(
    """
    import os
    import tracelet
    from torch.utils.tensorboard import SummaryWriter

    tracelet.start_logging(exp_name="parent", backend="mlflow")
    writer = SummaryWriter("runs/train")
    for step in range(100):
        writer.add_scalar("loss", float(step), step)
    pid = os.fork()
    if pid == 0:  # a DataLoader-like worker: logs, flushes and leaves; none of it may land
        child = SummaryWriter("runs/child")
        for step in range(10):
            child.add_scalar("loss", -1.0, 1000 + step)
        child.close()
        tracelet.stop_logging()
        os._exit(0)
    os.waitpid(pid, 0)
    for step in range(100, 200):
        writer.add_scalar("loss", float(step), step)
    tracelet.stop_logging()
    """
)


def test_a_forked_child_neither_exports_nor_holds_up_the_helper(mlflow_env, tmp_path: Path) -> None:
    experiment, env = _script(tmp_path, FORKED, "forked", mlflow_env.uri)
    done = _train(tmp_path, env)
    assert done.stderr.count("points recorded in forked child process") == 1, done.stderr[-3000:]
    mlflow = Mlflow(mlflow_env.uri)
    run = mlflow.only_run(experiment)
    assert run["info"]["status"] == "FINISHED"
    assert [row[0] for row in mlflow.history(run["info"]["run_id"], "train/loss")] == list(range(200))
    assert mlflow.keys(run) == {"train/loss"}


def _journaled(spool: Path) -> int:
    """Points in the journals in ``spool`` (what reached local disk)."""
    from opentelemetry.exporter.mlflow.spool import read  # noqa: PLC0415

    total = 0
    for path in spool.glob("*.jsonl"):
        try:
            header, entries = read(path)
        except (OSError, ValueError):
            continue
        if header.get("journal"):
            total += sum(len(e.metrics) for e in entries if hasattr(e, "metrics"))
    return total


NEXT_JOB = textwrap.dedent(
    """
    import tracelet
    from torch.utils.tensorboard import SummaryWriter

    tracelet.start_logging(exp_name="next", backend="mlflow", export_interval=0.2)
    writer = SummaryWriter("runs/train")
    for step in range(50):
        writer.add_scalar("loss", -1.0, step)
    tracelet.stop_logging()
    """
)


@pytest.mark.parametrize("recovery", ["next start", "tracelet upload"])
@pytest.mark.parametrize("mlflow_state", ["down", "up"])
def test_sigkill_of_the_whole_job_loses_nothing_that_reached_the_journal(
    tmp_path: Path, recovery: str, mlflow_state: str
) -> None:
    """The OOM killer or a lost node kills the training process and its helper together."""
    server = MlflowServer(tmp_path / "server")
    if mlflow_state == "up":
        server.start()
    try:
        experiment, env, process, pid = _start_victim(tmp_path, "whole-job", server.uri)
        spool = Path(env["TRACELET_SPOOL_DIR"])
        mlflow = Mlflow(server.uri)
        if mlflow_state == "down":
            wait_for(lambda: _journaled(spool) == 300, what="the 300 points in the journal")
        else:
            wait_for(lambda: bool(mlflow.runs(experiment)), what="the run")
            run_id = mlflow.runs(experiment)[0]["info"]["run_id"]
            wait_for(lambda: len(mlflow.history(run_id, "train/loss")) == 300, what="live delivery")
        (helper,) = _children(pid)
        os.kill(helper, signal.SIGKILL)  # both at once: nothing gets to shut down
        os.kill(pid, signal.SIGKILL)
        process.communicate(timeout=30)
        assert list(spool.glob("*.jsonl")), "the journal is what a killed job leaves"
        if mlflow_state == "down":
            server.start()
        if recovery == "next start":
            (tmp_path / "train.py").write_text(NEXT_JOB)
            _train(tmp_path, env)  # its exporter sends what the killed job left before it exits
        else:
            assert "ended 1 run(s) of killed processes as KILLED" in _upload(spool, env, server.uri)
        runs = {run["info"]["run_name"]: run for run in mlflow.runs(experiment)}
        victim = runs["victim"]
        assert victim["info"]["status"] == "KILLED"
        assert [row[0] for row in mlflow.history(victim["info"]["run_id"], "train/loss")] == list(range(300))
        if recovery == "next start":
            assert runs["next"]["info"]["status"] == "FINISHED"
            assert not list(spool.glob("*.jsonl"))
    finally:
        server.stop()


def test_sigterm_with_mlflow_down_spools_everything_within_the_grace_period(tmp_path: Path) -> None:
    """Kubernetes and Slurm: SIGTERM, a grace period, then SIGKILL. Nothing may wait for a dead MLflow."""
    server = MlflowServer(tmp_path / "server")  # down
    try:
        experiment, env, process, pid = _start_victim(tmp_path, "sigterm-down", server.uri)
        spool = Path(env["TRACELET_SPOOL_DIR"])
        wait_for(lambda: _journaled(spool) == 300, what="the points in the helper")
        (helper,) = _children(pid)
        began = time.monotonic()
        os.kill(pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)  # the grace period Kubernetes gives by default
            graceful = True
        except subprocess.TimeoutExpired:
            graceful = False
            os.kill(pid, signal.SIGKILL)
            os.kill(helper, signal.SIGKILL)
            process.wait(timeout=30)
        deadline = time.monotonic() + 30
        while not _gone(helper) and time.monotonic() < deadline:
            time.sleep(0.1)
        print(f"SIGTERM with MLflow down: exited in {time.monotonic() - began:.2f} s (graceful={graceful})")
        _out, errors = process.communicate(timeout=30)
        assert graceful, "the job outlived the grace period"
        assert "Traceback" not in errors
        assert "opentelemetry-exporter-mlflow upload --spool-dir" in errors  # the message says where the points are
        server.start()
        _upload(spool, env, server.uri)
        mlflow = Mlflow(server.uri)
        run = mlflow.only_run(experiment)
        assert run["info"]["status"] == "KILLED"
        assert [row[0] for row in mlflow.history(run["info"]["run_id"], "train/loss")] == list(range(300))
        assert not list(spool.glob("*.jsonl"))
    finally:
        server.stop()
