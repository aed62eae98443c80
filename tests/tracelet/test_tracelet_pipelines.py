"""The run naming over OTLP, and start_logging under ``opentelemetry-instrument`` (no second pipeline)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mlflow.tracking import MlflowClient
from support.console import console_points
from support.otlp_sink import OtlpSink
from torch.utils.tensorboard import SummaryWriter

import tracelet
from opentelemetry.exporter.mlflow.mapping import Mapper


@pytest.fixture
def otlp_sink() -> Iterator[OtlpSink]:
    sink = OtlpSink()
    thread = threading.Thread(target=sink.serve_forever, daemon=True)
    thread.start()
    yield sink
    sink.shutdown()
    sink.server_close()
    tracelet.stop_logging()


def test_otlp_carries_the_run_naming(otlp_sink: OtlpSink, tmp_path: Path) -> None:
    exp = tracelet.start_logging(
        exp_name="otlp-run",
        project="otlp-project",
        backend="otlp",
        otlp_endpoint=f"http://127.0.0.1:{otlp_sink.server_port}",
        export_interval=60,
    )
    writer = SummaryWriter(log_dir=str(tmp_path / "train"))
    values = [(step, 1 / (step + 1)) for step in range(10)]
    for step, value in values:
        writer.add_scalar("loss", value, step)
    writer.close()
    exp.log_metric("direct", 0.5, 3)
    exp.log_params({"lr": 0.01})
    exp.set_tag("team", "vision")
    tracelet.stop_logging()

    mapper = Mapper()
    batches = [batch for request in otlp_sink.requests for batch in mapper.from_otlp(request)]
    runs = {batch.run for batch in batches}
    assert len(runs) == 1
    (run,) = runs
    assert (run.experiment_name, run.run_name) == ("otlp-project", "otlp-run")
    metrics = [row for batch in batches for row in batch.metrics]
    assert [(step, value) for key, value, _, step in metrics if key == "train/loss"] == values
    assert [(step, value) for key, value, _, step in metrics if key == "direct"] == [(3, 0.5)]
    params = {k: v for batch in batches for k, v in batch.params.items()}
    tags = {k: v for batch in batches for k, v in batch.tags.items()}
    assert params == {"lr": "0.01"}
    assert tags["team"] == "vision"
    # The last requests (stop_logging's flush and shutdown) say how the run ended; none before them.
    ends = [[status for _, status, _ in mapper.run_ends(request)] for request in otlp_sink.requests]
    assert ends[-1] == ["FINISHED"]
    first = ends.index(["FINISHED"])
    assert ends[first:] == [["FINISHED"]] * (len(ends) - first) and not any(ends[:first])
    assert first > 0 or len(ends) <= 2


COOPERATING_SCRIPT = """
    import tracelet
    from torch.utils.tensorboard import SummaryWriter

    exp = tracelet.start_logging(exp_name="name-from-code", project="{project}", backend="mlflow")
    print("OWNED", exp._pipeline.owned, flush=True)
    writer = SummaryWriter(log_dir="runs/train")
    for step in range(20):
        writer.add_scalar("loss", step / 7, step)
    writer.close()
    exp.log_metric("direct", 3.0, 5)
    tracelet.stop_logging()
"""


def test_under_opentelemetry_instrument_points_are_captured_once(mlflow_env: Any, tmp_path: Path) -> None:
    project = "cooperation"
    script = tmp_path / "train.py"
    script.write_text(textwrap.dedent(COOPERATING_SCRIPT.format(project=project)))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "TRACELET_"))}
    env.update(
        OTEL_PYTHON_DISTRO="tensorboard",
        OTEL_METRICS_EXPORTER="mlflow,console",
        OTEL_METRIC_EXPORT_INTERVAL="60000",
        OTEL_RESOURCE_ATTRIBUTES=f"mlflow.experiment.name={project},mlflow.run.name=instrumented",
        TRACELET_SPOOL_DIR=str(tmp_path / "spool"),
        OMP_NUM_THREADS="1",
    )
    instrument = Path(sys.executable).with_name("opentelemetry-instrument")
    completed = subprocess.run(
        [str(instrument), sys.executable, str(script)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    assert "OWNED False" in completed.stdout
    warnings = [line for line in completed.stderr.splitlines() if "running under opentelemetry-instrument" in line]
    assert len(warnings) == 1 and "exp_name='name-from-code'" in warnings[0], completed.stderr[-3000:]

    # Every point handed to OpenTelemetry once: count the exemplars the console exporter printed.
    captured: dict[str, list[int]] = {}
    for tag, step, _value in console_points(completed.stdout):
        captured.setdefault(tag, []).append(step)
    assert {tag: sorted(steps) for tag, steps in captured.items()} == {"loss": list(range(20)), "direct": [5]}

    client = MlflowClient(tracking_uri=mlflow_env.uri)
    experiment = client.get_experiment_by_name(project)
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.run_name == "instrumented"  # the resource opentelemetry-instrument built names the run
    assert sorted((p.step, p.value) for p in client.get_metric_history(run.info.run_id, "train/loss")) == [
        (step, step / 7) for step in range(20)
    ]
    assert [(p.step, p.value) for p in client.get_metric_history(run.info.run_id, "direct")] == [(5, 3.0)]
    assert run.info.status == "FINISHED"
