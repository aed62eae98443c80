"""start_logging / stop_logging in this process, against the session's real MLflow server."""

from __future__ import annotations

import logging
import math
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from mlflow.entities import Run
from mlflow.tracking import MlflowClient
from opentelemetry.metrics import get_meter_provider
from torch.utils.tensorboard import SummaryWriter

import tracelet
from opentelemetry.instrumentation.tensorboard import TensorBoardInstrumentor
from tracelet.frameworks.pytorch import PyTorchFramework


@pytest.fixture(autouse=True)
def no_experiment_left() -> Iterator[None]:
    yield
    tracelet.stop_logging()


@pytest.fixture
def client(mlflow_env: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[MlflowClient]:
    monkeypatch.setenv("TRACELET_SPOOL_DIR", str(tmp_path / "spool"))
    monkeypatch.setenv("TRACELET_EXPORT_INTERVAL", "60")  # only the final flush delivers
    yield MlflowClient(tracking_uri=mlflow_env.uri)
    assert not TensorBoardInstrumentor().is_instrumented_by_opentelemetry
    assert not list((tmp_path / "spool").rglob("*.jsonl")), "points were left undelivered"


@pytest.fixture
def project(request: pytest.FixtureRequest) -> str:
    """An MLflow experiment of the test's own: the server is shared by the whole test run."""
    return f"lifecycle-{request.node.name}"


def runs(client: MlflowClient, project: str) -> dict[str, Run]:
    experiment = client.get_experiment_by_name(project)
    assert experiment is not None, f"no MLflow experiment {project!r}"
    found = client.search_runs([experiment.experiment_id])
    names = [run.info.run_name for run in found]
    assert len(names) == len(set(names)), names
    return {run.info.run_name: run for run in found}


def history(client: MlflowClient, run: Run, key: str) -> list[tuple[int, float]]:
    return sorted((p.step, p.value) for p in client.get_metric_history(run.info.run_id, key))


def test_stop_without_start_does_nothing(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="tracelet"):
        tracelet.stop_logging()
        tracelet.stop_logging()
    assert tracelet.get_active_experiment() is None
    assert caplog.records == []


def test_cycles_in_one_process_each_get_their_own_run(client: MlflowClient, project: str, tmp_path: Path) -> None:
    writer = SummaryWriter(log_dir=str(tmp_path / "train"))  # made before capture starts
    for cycle in range(3):
        exp = tracelet.start_logging(exp_name=f"cycle-{cycle}", project=project)
        assert tracelet.get_active_experiment() is exp
        assert get_meter_provider() is not exp._meter_provider  # the global provider is left alone
        for step in range(5):
            writer.add_scalar("loss", cycle * 10 + step, step)
        exp.log_metric("direct", cycle, iteration=cycle)
        tracelet.stop_logging()
        tracelet.stop_logging()  # idempotent
        assert tracelet.get_active_experiment() is None
        assert not TensorBoardInstrumentor().is_instrumented_by_opentelemetry
    writer.add_scalar("loss", -1, 99)  # after the last stop: not captured
    writer.close()
    found = runs(client, project)
    assert set(found) == {"cycle-0", "cycle-1", "cycle-2"}
    for cycle in range(3):
        run = found[f"cycle-{cycle}"]
        assert history(client, run, "train/loss") == [(step, cycle * 10 + step) for step in range(5)]
        assert history(client, run, "direct") == [(cycle, cycle)]
        assert run.info.status == "FINISHED"


def test_second_start_stops_the_first_with_a_warning(
    client: MlflowClient, project: str, caplog: pytest.LogCaptureFixture
) -> None:
    first = tracelet.start_logging(exp_name="first", project=project)
    first.log_metric("m", 1.5, 1)
    with caplog.at_level(logging.WARNING, logger="tracelet"):
        second = tracelet.start_logging(exp_name="second", project=project)
    assert [r.getMessage() for r in caplog.records if r.name.startswith("tracelet")] == [
        "tracelet: start_logging() while experiment 'first' is running; stopping it first (its points are "
        "delivered and its run ends)"
    ]
    assert not first.is_running and second.is_running
    assert tracelet.get_active_experiment() is second
    second.log_metric("m", 2.5, 2)
    tracelet.stop_logging()
    found = runs(client, project)
    assert history(client, found["first"], "m") == [(1, 1.5)]
    assert history(client, found["second"], "m") == [(2, 2.5)]
    assert {run.info.status for run in found.values()} == {"FINISHED"}


def test_context_manager_ends_the_run_failed_or_killed_on_exception(client: MlflowClient, project: str) -> None:
    with tracelet.start_logging(exp_name="fine", project=project) as exp:
        exp.log_metric("m", 1.0, 0)
    assert tracelet.get_active_experiment() is None
    with pytest.raises(ZeroDivisionError), tracelet.start_logging(exp_name="broken", project=project) as exp:
        exp.log_metric("m", 2.0, 0)
        _ = 1 / 0
    with pytest.raises(KeyboardInterrupt), tracelet.start_logging(exp_name="interrupted", project=project):
        raise KeyboardInterrupt
    found = runs(client, project)
    assert found["fine"].info.status == "FINISHED"
    assert found["broken"].info.status == "FAILED"
    assert found["interrupted"].info.status == "KILLED"
    assert history(client, found["broken"], "m") == [(0, 2.0)]
    # The process carries on: the next run ends normally.
    with tracelet.start_logging(exp_name="after", project=project):
        pass
    assert runs(client, project)["after"].info.status == "FINISHED"


def test_params_and_tags_become_run_params_and_tags(client: MlflowClient, project: str) -> None:
    exp = tracelet.start_logging(exp_name="params", project=project)
    params = {"lr": 0.001, "optimizer": {"name": "adam", "betas": "0.9,0.999"}, "layers": 3}
    exp.log_params(params)
    exp.log_param("seed", 7)
    exp.set_tags({"team": "vision", "stage": 2})
    exp.set_tag("note", "first try")
    assert (exp.name, exp.project) == ("params", project)
    tracelet.stop_logging()
    run = runs(client, project)["params"]
    assert run.data.params == {
        "lr": str(params["lr"]),
        "optimizer/name": params["optimizer"]["name"],
        "optimizer/betas": params["optimizer"]["betas"],
        "layers": str(params["layers"]),
        "seed": "7",
    }
    assert {k: run.data.tags[k] for k in ("team", "stage", "note")} == {
        "team": "vision",
        "stage": "2",
        "note": "first try",
    }


def test_second_framework_does_not_capture_twice(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:

    exp = tracelet.start_logging(exp_name="double", backend="prometheus", prometheus_port=0)
    own = exp._frameworks["pytorch"]
    framework = PyTorchFramework(patch_tensorboard=True)
    framework.initialize(exp)
    with caplog.at_level(logging.WARNING):
        framework.start_tracking()
    assert own.is_capturing and not framework.is_capturing
    assert "already instrumented" not in caplog.text
    writer = SummaryWriter(log_dir=str(tmp_path / "train"))
    for step in range(7):
        writer.add_scalar("loss", step / 10, step)
    writer.close()
    text = requests.get(exp.prometheus_url, timeout=10).text
    counted = [
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("tensorboard_points_total{") and "opentelemetry.instrumentation.tensorboard" in line
    ]
    assert counted == [7]
    assert "tensorboard_scalar{" in text and 'tensorboard_tag="loss"' in text
    tracelet.stop_logging()
    assert not own.is_capturing and not TensorBoardInstrumentor().is_instrumented_by_opentelemetry


def test_patch_tensorboard_false_leaves_summary_writer_alone(
    client: MlflowClient, project: str, tmp_path: Path
) -> None:
    exp = tracelet.start_logging(exp_name="no-patch", project=project, patch_tensorboard=False)
    assert not TensorBoardInstrumentor().is_instrumented_by_opentelemetry
    writer = SummaryWriter(log_dir=str(tmp_path / "train"))
    writer.add_scalar("from_tensorboard", 1.0, 0)
    writer.close()
    exp._frameworks["pytorch"].log_metric("direct", 0.25, iteration=4)
    tracelet.stop_logging()
    run = runs(client, project)["no-patch"]
    assert set(run.data.metrics) == {"direct"}
    assert history(client, run, "direct") == [(4, 0.25)]


def test_bad_input_is_named_and_logging_after_stop_warns_once(
    client: MlflowClient, project: str, caplog: pytest.LogCaptureFixture
) -> None:
    exp = tracelet.start_logging(exp_name="bad-input", project=project)
    with pytest.raises(TypeError, match=r"metric 'loss': the value must be a number, got str 'high'"):
        exp.log_metric("loss", "high")
    with pytest.raises(TypeError, match=r"metric 'loss': the iteration must be an integer, got 1.5"):
        exp.log_metric("loss", 1.0, 1.5)
    with pytest.raises(ValueError, match="the name must be a non-empty string"):
        exp.log_metric("", 1.0)
    with pytest.raises(TypeError, match="log_params\\(\\) takes a dict"):
        exp.log_params(["lr", 0.1])
    with pytest.raises(TypeError, match="metadata must be a dict"):
        exp._frameworks["pytorch"].log_enhanced_metric("acc", 0.5, "accuracy", 1, metadata=["val"])
    with pytest.raises(RuntimeError, match="call initialize\\(experiment\\) first"):
        PyTorchFramework().log_metric("x", 1.0)
    with pytest.raises(ValueError, match="unknown backend 'wandb'; valid backends: mlflow, otlp, prometheus, console"):
        tracelet.start_logging(backend="wandb")
    with pytest.raises(TypeError, match="takes a TraceletSettings"):
        tracelet.start_logging(settings={"project": "x"})
    assert tracelet.get_active_experiment() is exp  # a refused start leaves the running one alone
    exp.log_metric("loss", 0.5, 3)
    tracelet.stop_logging()
    with caplog.at_level(logging.WARNING, logger="tracelet"):
        for step in range(3):
            exp.log_metric("loss", 0.1, step)
    assert [r.getMessage() for r in caplog.records] == [
        "tracelet: experiment 'bad-input' is not running (stop_logging() was called); metrics logged to it are dropped"
    ]
    assert history(client, runs(client, project)["bad-input"], "loss") == [(3, 0.5)]


def test_non_finite_values_are_logged_as_they_are(client: MlflowClient, project: str) -> None:
    exp = tracelet.start_logging(exp_name="non-finite", project=project)
    values = [float("nan"), float("inf"), -float("inf"), 1e-300]
    for step, value in enumerate(values):
        exp.log_metric("loss", value, step)
    tracelet.stop_logging()
    stored = history(client, runs(client, project)["non-finite"], "loss")
    assert [step for step, _ in stored] == list(range(len(values)))
    assert math.isnan(stored[0][1])
    # MLflow stores infinities as the largest double
    assert [value for _, value in stored[1:]] == [sys.float_info.max, -sys.float_info.max, values[3]]


SWEEP = """
import gc, json, os, sys, threading
import tracelet
from torch.utils.tensorboard import SummaryWriter
from opentelemetry.exporter.mlflow import MlflowMetricExporter
from opentelemetry.instrumentation.tensorboard.capture import Recorder
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader

def live(kind):
    return sum(1 for o in gc.get_objects() if isinstance(o, kind))

def settle():
    for thread in threading.enumerate():  # the helper process finishes its run on its own, then its threads end
        if thread is not threading.current_thread():
            thread.join(timeout=120)
    while gc.collect():  # a freed provider's weak-keyed entries free their values in the next pass
        pass

counts = []
for trial in range(int(sys.argv[2])):  # a hyperparameter sweep in one process, as Optuna or Ray Tune run it
    tracelet.start_logging(exp_name=f"trial-{trial}", backend=sys.argv[1], prometheus_port=0)
    writer = SummaryWriter(f"runs/trial-{trial}")
    for step in range(20):
        writer.add_scalar("loss", 1 / (step + 1), step)
    writer.close()
    tracelet.stop_logging()
    settle()
    counts.append({
        "objects": [live(MlflowMetricExporter), live(Recorder), live(MeterProvider), live(MetricReader)],
        "threads": threading.active_count(),
        "fds": len(os.listdir("/proc/self/fd")),
    })
print(json.dumps(counts))
"""


@pytest.mark.parametrize(("backend", "cycles"), [("mlflow", 20), ("prometheus", 20)])
def test_a_sweep_of_experiments_in_one_process_frees_each_one(
    mlflow_env: Any, tmp_path: Path, backend: str, cycles: int
) -> None:
    """Each finished experiment's exporter, recorder, provider, readers, threads and files are freed."""
    import json  # noqa: PLC0415
    import subprocess  # noqa: PLC0415

    from support.env import subprocess_env  # noqa: PLC0415

    (tmp_path / "sweep.py").write_text(SWEEP)
    env = subprocess_env(
        MLFLOW_TRACKING_URI=mlflow_env.uri,
        MLFLOW_EXPERIMENT_NAME=f"sweep-{backend}",
        TRACELET_SPOOL_DIR=str(tmp_path / "spool"),
    )
    done = subprocess.run(
        [sys.executable, "sweep.py", backend, str(cycles)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    counts = json.loads(done.stdout.splitlines()[-1])
    assert [c["objects"] for c in counts] == [[0, 0, 0, 0]] * cycles, counts
    # The first cycle may open what a process keeps once (an HTTP pool, the journal directory): no growth after.
    assert {c["threads"] for c in counts[1:]} == {counts[0]["threads"]}, counts
    assert {c["fds"] for c in counts[1:]} == {counts[0]["fds"]}, counts
