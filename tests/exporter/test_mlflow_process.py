"""Whole processes: zero-code start, SIGTERM, an uncaught exception, and a spool sent later."""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from mlflow_readback import T0, Mlflow, assert_exactly, instrumented, provider_for, unique
from support.env import subprocess_env
from support.mlflow_server import free_port
from torch.utils.tensorboard import SummaryWriter

from opentelemetry.exporter.mlflow import MlflowMetricExporter

PYTHON = sys.executable
INSTRUMENT = str(Path(sys.executable).with_name("opentelemetry-instrument"))

TRAIN = textwrap.dedent(
    f"""
    import sys, time
    from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
    from opentelemetry.sdk.resources import Resource
    from torch.utils.tensorboard import SummaryWriter
    from opentelemetry.exporter.mlflow import MlflowMetricExporter
    from opentelemetry.instrumentation.tensorboard import TensorBoardInstrumentor
    from opentelemetry.instrumentation.tensorboard.configurator import meter_provider

    mode = sys.argv[1]
    exporter = MlflowMetricExporter()  # everything from the environment
    reader = PeriodicExportingMetricReader(exporter, export_interval_millis=500)
    provider = meter_provider([reader], resource=Resource.create({{"service.name": "victim"}}))
    TensorBoardInstrumentor().instrument(meter_provider=provider)
    writer = SummaryWriter("runs/train")
    for step in range(1_000_000):
        writer.add_scalar("loss", step * 0.5, step, walltime={T0} + step)
        print(step, flush=True)  # printed only once the step is logged
        if mode == "fail" and step == 499:
            raise RuntimeError("the loss diverged")
        time.sleep(0.002)
    """
)

ZERO_CODE = textwrap.dedent(
    f"""
    import math
    from torch.utils.tensorboard import SummaryWriter

    train, validation = SummaryWriter("runs/train"), SummaryWriter("runs/validation")
    for step in range(1_000):
        train.add_scalar("Loss", math.nan if step == 500 else 1 / (step + 1), step, walltime={T0} + step)
        validation.add_scalar("Loss", 2 / (step + 1), step, walltime={T0} + step)
    train.close()
    validation.close()
    """
)


def env_for(server_uri: str, experiment: str, tmp_path: Path, **extra: str) -> dict[str, str]:
    return subprocess_env(
        MLFLOW_TRACKING_URI=server_uri,
        MLFLOW_EXPERIMENT_NAME=experiment,
        TRACELET_SPOOL_DIR=str(tmp_path / "spool"),
        **extra,
    )


def steps_in(mlflow: Mlflow, run: dict, key: str) -> list[int]:
    return [row[0] for row in mlflow.history(run["info"]["run_id"], key)]


def test_sigterm_flushes_and_marks_the_run_killed(mlflow_server, tmp_path: Path) -> None:
    (tmp_path / "train.py").write_text(TRAIN)
    experiment = unique("sigterm")
    process = subprocess.Popen(
        [PYTHON, "train.py", "loop"],
        cwd=tmp_path,
        env=env_for(mlflow_server.uri, experiment, tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    last = -1
    for line in process.stdout:
        last = int(line)
        if last >= 300:
            break
    process.send_signal(signal.SIGTERM)
    rest, errors = process.communicate(timeout=120)
    last = max([last] + [int(line) for line in rest.split()])
    assert process.returncode == 128 + signal.SIGTERM, errors
    mlflow = Mlflow(mlflow_server.uri)
    run = mlflow.only_run(experiment)
    assert run["info"]["status"] == "KILLED"
    steps = steps_in(mlflow, run, "train/loss")
    assert steps == list(range(len(steps)))  # nothing missing, nothing twice
    assert last <= steps[-1] <= last + 1  # everything up to the signal (the step being logged may be in)
    assert not list((tmp_path / "spool").glob("*.jsonl"))


def test_an_uncaught_exception_marks_the_run_failed(mlflow_server, tmp_path: Path) -> None:
    (tmp_path / "train.py").write_text(TRAIN)
    experiment = unique("failed")
    done = subprocess.run(
        [PYTHON, "train.py", "fail"],
        cwd=tmp_path,
        env=env_for(mlflow_server.uri, experiment, tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 1 and "RuntimeError: the loss diverged" in done.stderr  # the traceback still shows
    mlflow = Mlflow(mlflow_server.uri)
    run = mlflow.only_run(experiment)
    assert run["info"]["status"] == "FAILED"
    assert steps_in(mlflow, run, "train/loss") == list(range(500))


def test_zero_code_opentelemetry_instrument(mlflow_server, tmp_path: Path) -> None:
    (tmp_path / "zero_code_train.py").write_text(ZERO_CODE)
    experiment = unique("zero-code")
    done = subprocess.run(
        [INSTRUMENT, PYTHON, "zero_code_train.py"],
        cwd=tmp_path,
        env=env_for(mlflow_server.uri, experiment, tmp_path, OTEL_METRICS_EXPORTER="mlflow"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    mlflow = Mlflow(mlflow_server.uri)
    run = mlflow.only_run(experiment)
    assert run["info"]["status"] == "FINISHED" and run["info"]["run_name"] == "zero_code_train"
    expected = {
        "train/Loss": [(s, float("nan") if s == 500 else 1 / (s + 1), (T0 + s) * 1000) for s in range(1000)],
        "validation/Loss": [(s, 2 / (s + 1), (T0 + s) * 1000) for s in range(1000)],
    }
    assert_exactly(mlflow, run["info"]["run_id"], expected)


def test_points_spooled_while_mlflow_never_answers_are_uploaded_later_once(
    mlflow_server, tmp_path: Path, caplog
) -> None:
    experiment = unique("spooled")
    spool = tmp_path / "spool"
    exporter = MlflowMetricExporter(
        f"http://127.0.0.1:{free_port()}",  # nothing listens there, now or later
        experiment_name=experiment,
        spool_dir=spool,
        export_timeout=2,
        request_timeout=1,
        handle_process_exit=False,
    )
    provider = provider_for(exporter, "offline", interval_ms=200)
    expected: dict[str, list] = {"train/loss": []}
    with caplog.at_level(logging.WARNING), instrumented(provider):
        writer = SummaryWriter(str(tmp_path / "train"))
        for step in range(3_000):
            writer.add_scalar("loss", step / 3, step, walltime=T0 + step)
            expected["train/loss"].append((step, step / 3, (T0 + step) * 1000))
        writer.close()
        provider.shutdown()
    told = [r for r in caplog.records if "opentelemetry-exporter-mlflow upload --spool-dir" in r.getMessage()]
    assert len(told) == 1 and str(spool) in told[0].getMessage() and "3000 points" in told[0].getMessage()
    assert list(spool.glob("*.jsonl")) and not list(spool.glob("*.lock"))

    upload = [PYTHON, "-m", "tracelet.cli", "upload", "--spool-dir", str(spool), "--tracking-uri", mlflow_server.uri]
    done = subprocess.run(upload, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "sent 3000 points" in done.stdout
    assert not list(spool.glob("*.jsonl"))
    again = subprocess.run(upload, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "nothing to upload" in again.stdout

    mlflow = Mlflow(mlflow_server.uri)
    run = mlflow.only_run(experiment)
    assert run["info"]["status"] == "FINISHED"  # the status waited in the spool too
    assert_exactly(mlflow, run["info"]["run_id"], expected)


def test_sigterm_handler_is_installed_only_over_the_default_from_the_main_thread(tmp_path: Path) -> None:
    probe = textwrap.dedent(
        """
        import os, signal, sys, threading, time
        from opentelemetry.exporter.mlflow import MlflowMetricExporter, lifecycle

        def make():
            MlflowMetricExporter("http://127.0.0.1:1", spool_dir=sys.argv[2])

        if sys.argv[1] == "own":
            mine = lambda *args: None
            signal.signal(signal.SIGTERM, mine)
            make()
            print(signal.getsignal(signal.SIGTERM) is mine)
        elif sys.argv[1] == "fork":  # a DataLoader worker dies of SIGTERM as it always did
            make()
            pid = os.fork()
            if pid == 0:
                time.sleep(30)
                os._exit(0)
            time.sleep(0.5)
            os.kill(pid, signal.SIGTERM)
            status = os.waitpid(pid, 0)[1]
            print(os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGTERM)
        elif sys.argv[1] == "thread":
            thread = threading.Thread(target=make)
            thread.start()
            thread.join()
            print(signal.getsignal(signal.SIGTERM) is signal.SIG_DFL)
        else:
            make()
            print(signal.getsignal(signal.SIGTERM) is lifecycle._on_sigterm)
        """
    )
    for case in ("own", "thread", "fork", "default"):
        done = subprocess.run(
            [PYTHON, "-c", probe, case, str(tmp_path)], env=subprocess_env(), capture_output=True, text=True, timeout=60
        )
        assert done.stdout.strip() == "True", (case, done.stderr)
