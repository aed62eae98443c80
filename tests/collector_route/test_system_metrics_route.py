"""Zero code: ``OTEL_PYTHON_TENSORBOARD_SYSTEM_METRICS=true opentelemetry-instrument python train.py``.

The system samples travel the collector route (collector -> ``tracelet receive`` -> MLflow, and the
collector's Prometheus exporter) and land under the same ``system/...`` keys as from
``start_logging(system_metrics=True)``.
"""

from __future__ import annotations

from pathlib import Path

import requests
from mlflow.tracking import MlflowClient
from route_support import ReceiverProcess, finished, instrumented
from support.collector import Collector
from support.mlflow_server import MlflowServer
from support.system_metrics import HOST_KEYS, assert_plausible, gpu_count, mlflow_system_names, wait_for_samples

from opentelemetry.instrumentation.tensorboard.system_metrics import SCOPE

SCRIPT = """
import time
from pathlib import Path

from tensorboardX import SummaryWriter

writer = SummaryWriter(logdir="runs/train")
for step in range(5):
    writer.add_scalar("loss", 1 / (step + 1), step)
writer.flush()
while not Path("stop").exists():  # the test says when MLflow holds enough samples
    time.sleep(0.05)
writer.close()
"""


def test_zero_code_system_metrics_reach_mlflow_and_prometheus_through_the_collector(
    mlflow_server: MlflowServer, collector_binary: Path, tmp_path: Path, experiment: str
) -> None:
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    receiver = ReceiverProcess(mlflow_server.uri, tmp_path / "receiver.log").start()
    collector = Collector(
        collector_binary, tmp_path / "storage", receiver_endpoint=receiver.endpoint, log_path=tmp_path / "collector.log"
    )
    client = MlflowClient(tracking_uri=mlflow_server.uri)
    try:
        with collector:
            training = instrumented(
                script,
                [],
                collector,
                experiment,
                tmp_path,
                OTEL_PYTHON_TENSORBOARD_SYSTEM_METRICS="true",
                OTEL_PYTHON_TENSORBOARD_SYSTEM_METRICS_INTERVAL="0.2",
            )
            try:
                run = wait_for_samples(
                    client,
                    experiment,
                    "system/system_memory_usage_megabytes",
                    3,
                    why=lambda: collector.logs() + receiver.logs(),
                )
                exposed = requests.get(f"http://{collector.prometheus_endpoint}/metrics", timeout=10).text
            finally:
                (tmp_path / "stop").touch()
            output = finished(training)
    finally:
        receiver.stop()

    history = assert_plausible(client, run.info.run_id)
    assert mlflow_system_names() <= set(history)
    if gpu_count() == 0:
        assert set(history) == HOST_KEYS
        assert output.count("no GPU metrics") == 1, output[-3000:]
    assert [p.step for p in client.get_metric_history(run.info.run_id, "train/loss")] == list(range(5))

    # Prometheus, through the collector: the OpenTelemetry names, from tracelet's meter only (the
    # system-metrics instrumentation's own auto-instrumentation, sampling at every export, stays off).
    for name in ("system_memory_usage_bytes", "process_cpu_time_seconds_total", "system_filesystem_usage_bytes"):
        assert f"\n{name}{{" in exposed, name
    assert f'otel_scope_name="{SCOPE}"' in exposed
    assert 'otel_scope_name="opentelemetry.instrumentation.system_metrics"' not in exposed
