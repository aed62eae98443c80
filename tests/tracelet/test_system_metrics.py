"""System and GPU metrics: ``start_logging(system_metrics=True)`` into a real MLflow server and a real Prometheus.

What NVML does on a machine without it is tested for real where it is absent (this package's
``pynvml`` finds no library), and by a stand-in module where the case cannot be made real here
(``pynvml`` not installed, NVML with no device, devices with readings): those check tracelet's own
handling, not NVML. The GPU test runs for real where NVML sees a GPU.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import uuid
from pathlib import Path
from typing import Any

import pytest
import requests
from mlflow.tracking import MlflowClient
from support.env import subprocess_env
from support.prometheus import Prometheus
from support.system_metrics import (
    GPU_KEYS,
    HOST_KEYS,
    assert_plausible,
    gpu_count,
    mlflow_system_names,
    wait_for_samples,
)
from tensorboardX import SummaryWriter

import tracelet
from opentelemetry.instrumentation.tensorboard.system_metrics import SCOPE
from tracelet.settings import TraceletSettings


@pytest.fixture(autouse=True)
def _stopped() -> Any:
    yield
    tracelet.stop_logging()


def test_the_setting_and_its_interval_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert TraceletSettings().system_metrics is False
    assert TraceletSettings().system_metrics_interval == 10
    monkeypatch.setenv("TRACELET_SYSTEM_METRICS", "true")
    monkeypatch.setenv("TRACELET_SYSTEM_METRICS_INTERVAL", "2.5")
    assert (TraceletSettings().system_metrics, TraceletSettings().system_metrics_interval) == (True, 2.5)
    with pytest.raises(ValueError, match="system_metrics_interval"):
        tracelet.start_logging(system_metrics=True, system_metrics_interval=0)


def test_start_logging_with_system_metrics_fills_mlflow_system_keys(mlflow_env: Any, tmp_path: Path) -> None:
    project = f"system-{uuid.uuid4().hex[:8]}"
    tracelet.start_logging(
        exp_name="with-system", project=project, backend="mlflow", system_metrics=True, system_metrics_interval=0.2
    )
    writer = SummaryWriter(logdir=str(tmp_path / "runs" / "train"))
    for step in range(5):
        writer.add_scalar("loss", 1 / (step + 1), step)
    writer.close()
    client = MlflowClient(tracking_uri=mlflow_env.uri)
    run = wait_for_samples(client, project, "system/system_memory_usage_megabytes", 3)
    tracelet.stop_logging()

    history = assert_plausible(client, run.info.run_id)
    # The names are the ones MLflow's own system metrics use (read from the installed MLflow).
    assert mlflow_system_names() <= set(history)
    gpus = {key for key in history if key.startswith("system/gpu_")}
    every = {f"system/gpu_{i}_{name}" for i in range(gpu_count()) for name in GPU_KEYS}
    assert {key for key in every if "_power_" not in key and "_temperature_" not in key} <= gpus <= every
    assert set(history) == HOST_KEYS | gpus
    # The TensorBoard points travel beside them, every step.
    assert [p.step for p in client.get_metric_history(run.info.run_id, "train/loss")] == list(range(5))
    assert client.get_run(run.info.run_id).info.status == "FINISHED"


def test_the_prometheus_backend_serves_the_opentelemetry_names(tmp_path: Path) -> None:
    exp = tracelet.start_logging(backend="prometheus", prometheus_port=0, system_metrics=True)
    url = exp.prometheus_url
    assert url is not None
    text = requests.get(url, timeout=10).text
    for name in (
        "process_cpu_time_seconds_total",
        "process_memory_usage_bytes",
        "system_cpu_utilization",
        "system_memory_usage_bytes",
        "system_network_io_bytes_total",
        "system_disk_io_bytes_total",
        "system_filesystem_usage_bytes",
    ):
        assert f"\n{name}{{" in text, name
    target = url.removeprefix("http://").removesuffix("/metrics")
    with Prometheus(tmp_path / "prometheus", [target], job_name="train") as prometheus:
        used = prometheus.wait_for('system_memory_usage_bytes{state="used"}', predicate=lambda r: len(r) == 1)
        assert float(used[0]["value"][1]) > 0
        assert used[0]["metric"]["otel_scope_name"] == SCOPE
        cpu = prometheus.wait_for('process_cpu_time_seconds_total{type="user"}', predicate=lambda r: len(r) == 1)
        assert float(cpu[0]["value"][1]) > 0


NO_GPU_SCRIPT = """
    import logging, sys
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    {setup}
    import tracelet

    for run in range(2):  # two experiments in one process: still one line
        exp = tracelet.start_logging(backend="console", export_interval=60, system_metrics=True,
                                     system_metrics_interval=0.001)
        for _ in range(3):
            exp._pipeline.provider.force_flush()
        tracelet.stop_logging()
    print("DONE")
"""

SETUPS = {
    "pynvml-not-installed": ("sys.modules['pynvml'] = None  # import pynvml raises ImportError", "not installed"),
    "nvml-without-device": (
        "import pynvml\n"
        "pynvml.nvmlInit = lambda *a: None\n"
        "pynvml.nvmlShutdown = lambda: None\n"
        "pynvml.nvmlDeviceGetCount = lambda: 0",
        "NVML finds no GPU",
    ),
}


def _without_gpu(setup: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "train.py"
    script.write_text(textwrap.dedent(NO_GPU_SCRIPT).replace("{setup}", setup))
    return subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True, timeout=300
    )


@pytest.mark.parametrize("case", sorted(SETUPS))
def test_without_pynvml_or_without_a_device_one_line_says_so(case: str, tmp_path: Path) -> None:
    setup, why = SETUPS[case]
    completed = _without_gpu(setup, tmp_path)
    assert completed.returncode == 0, completed.stderr[-3000:]
    lines = [line for line in completed.stderr.splitlines() if "GPU" in line]
    assert len(lines) == 1 and "no GPU metrics" in lines[0] and why in lines[0], completed.stderr[-3000:]
    assert "DONE" in completed.stdout
    assert '"system.memory.usage"' in completed.stdout  # the host metrics went on
    assert '"hw.gpu.utilization"' not in completed.stdout


@pytest.mark.skipif(gpu_count() > 0, reason="NVML works on this machine: the missing-library case cannot be real")
def test_without_the_nvml_library_one_line_says_so(tmp_path: Path) -> None:
    completed = _without_gpu("import pynvml  # the real one: NVML's shared library is not on this machine", tmp_path)
    assert completed.returncode == 0, completed.stderr[-3000:]
    lines = [line for line in completed.stderr.splitlines() if "GPU" in line]
    assert len(lines) == 1 and "NVML cannot start" in lines[0] and "Library Not Found" in lines[0], lines
    assert '"system.memory.usage"' in completed.stdout


@pytest.mark.skipif(gpu_count() == 0, reason="no NVIDIA GPU here: NVML (nvidia-ml-py) finds no device")
def test_a_real_gpu_fills_the_mlflow_gpu_keys(mlflow_env: Any) -> None:
    project = f"gpu-{uuid.uuid4().hex[:8]}"
    tracelet.start_logging(project=project, backend="mlflow", system_metrics=True, system_metrics_interval=0.2)
    client = MlflowClient(tracking_uri=mlflow_env.uri)
    run = wait_for_samples(client, project, "system/gpu_0_utilization_percentage", 3)
    tracelet.stop_logging()
    history = assert_plausible(client, run.info.run_id)
    for gpu in range(gpu_count()):

        def values(name: str, gpu: int = gpu) -> list[float]:
            return [value for _, _, value in history[f"system/gpu_{gpu}_{name}"]]

        assert all(0 <= v <= 100 for v in values("utilization_percentage"))
        assert all(0 <= v <= 100 for v in values("memory_usage_percentage"))
        assert all(v >= 0 for v in values("memory_usage_megabytes"))
        # power and temperature only where the board reports them
        if f"system/gpu_{gpu}_power_usage_watts" in history:
            assert all(v > 0 for v in values("power_usage_watts"))
        if f"system/gpu_{gpu}_temperature_celsius" in history:
            assert all(0 < v < 150 for v in values("temperature_celsius"))
