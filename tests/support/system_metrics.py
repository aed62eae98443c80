"""What a run with system metrics holds in MLflow: the documented ``system/...`` keys and plausible values."""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Callable
from typing import Any

import psutil
from mlflow.tracking import MlflowClient

HOST_KEYS = frozenset(
    f"system/{name}"
    for name in (
        "cpu_utilization_percentage",
        "system_memory_usage_megabytes",
        "system_memory_usage_percentage",
        "disk_usage_megabytes",
        "disk_available_megabytes",
        "disk_usage_percentage",
        "network_receive_megabytes",
        "network_transmit_megabytes",
        "disk_read_megabytes",
        "disk_write_megabytes",
        "process_cpu_utilization_percentage",
        "process_memory_usage_megabytes",
    )
)
GPU_KEYS = (
    "utilization_percentage",
    "memory_usage_megabytes",
    "memory_usage_percentage",
    "power_usage_watts",
    "temperature_celsius",
)


def gpu_count() -> int:
    """NVIDIA GPUs NVML sees here (0 without nvidia-ml-py, the NVML library or a device)."""
    if importlib.util.find_spec("pynvml") is None:
        return 0
    import pynvml  # noqa: PLC0415

    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return 0
    try:
        return pynvml.nvmlDeviceGetCount()
    finally:
        pynvml.nvmlShutdown()


def mlflow_system_names() -> set[str]:
    """The names the installed MLflow gives its own CPU, memory, disk and network metrics."""
    from mlflow.system_metrics.metrics.cpu_monitor import CPUMonitor  # noqa: PLC0415
    from mlflow.system_metrics.metrics.disk_monitor import DiskMonitor  # noqa: PLC0415
    from mlflow.system_metrics.metrics.network_monitor import NetworkMonitor  # noqa: PLC0415

    names: set[str] = set()
    for monitor in (CPUMonitor(), DiskMonitor(), NetworkMonitor()):
        monitor.collect_metrics()
        names |= {f"system/{name}" for name in monitor.aggregate_metrics()}
    return names


def wait_for_samples(
    client: MlflowClient, experiment: str, key: str, samples: int, why: Callable[[], str] = str
) -> Any:
    """The experiment's only run once it holds ``samples`` points of ``key``; the timeout bounds liveness only."""
    deadline = time.monotonic() + 180
    while True:
        found = client.get_experiment_by_name(experiment)
        runs = client.search_runs([found.experiment_id]) if found is not None else []
        if len(runs) == 1 and len(client.get_metric_history(runs[0].info.run_id, key)) >= samples:
            return runs[0]
        assert len(runs) <= 1, [run.info.run_name for run in runs]
        assert time.monotonic() < deadline, f"fewer than {samples} samples of {key} in MLflow\n{why()}"
        time.sleep(0.3)


def assert_plausible(client: MlflowClient, run_id: str) -> dict[str, list[tuple[int, int, float]]]:
    """Every host key of the run: steps 0, 1, 2, ... one timestamp per step, values a machine can have.

    Returns each key's (step, timestamp, value) points by step.
    """
    run = client.get_run(run_id)
    keys = {key for key in run.data.metrics if key.startswith("system/")}
    assert keys >= HOST_KEYS, sorted(HOST_KEYS - keys)
    history = {
        key: sorted((p.step, p.timestamp, p.value) for p in client.get_metric_history(run_id, key)) for key in keys
    }
    samples = len(history["system/system_memory_usage_megabytes"])
    for key in HOST_KEYS:
        assert [step for step, _, _ in history[key]] == list(range(samples)), key
    stamps = [[stamp for _, stamp, _ in history[key]] for key in sorted(HOST_KEYS)]
    assert all(row == stamps[0] for row in stamps), "the keys of one sample share its collection time"
    assert stamps[0] == sorted(set(stamps[0])), "one sample per collection time, in order"

    def values(name: str) -> list[float]:
        return [value for _, _, value in history[f"system/{name}"]]

    memory, disk = psutil.virtual_memory().total / 1e6, psutil.disk_usage("/").total / 1e6
    assert all(0 <= v <= 100 for v in values("cpu_utilization_percentage"))
    assert all(0 < v <= memory for v in values("system_memory_usage_megabytes"))
    assert all(0 < v <= 100 for v in values("system_memory_usage_percentage"))
    assert all(0 < v <= disk for v in values("disk_usage_megabytes"))
    assert all(0 < v <= disk for v in values("disk_available_megabytes"))
    assert all(0 < v < 100 for v in values("disk_usage_percentage"))
    for name in ("network_receive", "network_transmit", "disk_read", "disk_write"):
        counted = values(f"{name}_megabytes")
        assert counted[0] == 0 and counted == sorted(counted), name  # since the first sample, never down
    assert all(0 <= v <= 100 for v in values("process_cpu_utilization_percentage"))
    assert all(0 < v <= memory for v in values("process_memory_usage_megabytes"))
    return history
