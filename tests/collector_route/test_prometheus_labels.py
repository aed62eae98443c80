"""In Prometheus every series names its job's MLflow run, on the collector route and from the in-process backend.

Two jobs of one script differ in Prometheus by more than a random ``instance``: the labels
``mlflow_experiment_name``, ``mlflow_run_name`` and ``distributed_rank`` come from the job's
resource, and nothing else of the resource does (it stays on ``target_info``, joined on
``job``/``instance``). Real scripts, a real collector (shipped otel-collector.yaml), a real
Prometheus.
"""

from __future__ import annotations

import getpass
import subprocess
import sys
import textwrap
from pathlib import Path

from route_support import INSTRUMENT, PACED, SCALAR_SERIES, finished, instrumented
from support.collector import Collector, free_port
from support.env import subprocess_env
from support.prometheus import Prometheus

RUN_LABELS = {"mlflow_experiment_name", "mlflow_run_name", "distributed_rank"}
# The other resource attributes tracelet sets: on target_info, never on the series.
NOT_LABELS = {"mlflow_user", "mlflow_source_name", "mlflow_run_start_time", "tracelet_version", "service_name"}
# The join README.md and prometheus/tracelet-alerts.yml show, for what is not a label.
JOIN = (
    'tensorboard_scalar{{tensorboard_tag="loss", {selector}}} * on (job, instance) group_left (mlflow_user) target_info'
)


def test_two_jobs_of_one_script_through_the_collector_carry_their_run_names(
    collector_binary: Path, tmp_path: Path, experiment: str
) -> None:
    collector = Collector(
        collector_binary,
        tmp_path / "storage",
        receiver_endpoint=f"http://127.0.0.1:{free_port()}",  # nothing listens: only Prometheus is looked at
        log_path=tmp_path / "collector.log",
    )
    with collector, Prometheus(tmp_path / "prometheus", [collector.prometheus_endpoint]) as prometheus:
        for name, extra in (("lr-0.1", {}), ("lr-0.01", {"RANK": "1", "WORLD_SIZE": "2"})):
            cwd = tmp_path / name
            cwd.mkdir()
            job = instrumented(
                PACED,
                ["20", "0"],
                collector,
                experiment,
                cwd,
                OTEL_RESOURCE_ATTRIBUTES=f"mlflow.run.name={name}",
                **extra,
            )
            finished(job)

        query = SCALAR_SERIES + ', tensorboard_tag="loss"}'
        result = prometheus.wait_for(query, predicate=lambda r: len(r) == 2)
        by_run = {item["metric"]["mlflow_run_name"]: item["metric"] for item in result}
        assert set(by_run) == {"lr-0.1", "lr-0.01"}
        for labels in by_run.values():
            assert labels["job"] == "paced_train"  # service.name: the same for every job of the script
            assert labels["mlflow_experiment_name"] == experiment
            assert not NOT_LABELS & set(labels), labels
        assert "distributed_rank" not in by_run["lr-0.1"]
        assert by_run["lr-0.01"]["distributed_rank"] == "1"
        assert by_run["lr-0.1"]["instance"] != by_run["lr-0.01"]["instance"]
        # No series more than tags x writers x jobs: the labels follow the instance.
        assert prometheus.series_count(SCALAR_SERIES + f', mlflow_experiment_name="{experiment}"}}') == 4

        (joined,) = prometheus.wait_for(JOIN.format(selector='mlflow_run_name="lr-0.1"'))
        assert joined["metric"]["mlflow_user"] == getpass.getuser()
        assert joined["metric"]["mlflow_run_name"] == "lr-0.1"


LOOP = """
writer = SummaryWriter("runs/train")
step = 0
while not Path("stop").exists():
    writer.add_scalar("loss", 1.0 / (step + 1), step)
    step += 1
    time.sleep(0.05)
"""
IN_PROCESS = (
    """
import time
from pathlib import Path
import tracelet
from torch.utils.tensorboard import SummaryWriter

exp = tracelet.start_logging(exp_name="lr-0.1", project="{experiment}", backend="prometheus", prometheus_port=0)
print(exp.prometheus_url, flush=True)
"""
    + LOOP
    + "tracelet.stop_logging()\n"
)


def _loss_labels_and_join(prometheus: Prometheus, experiment: str) -> dict[str, str]:
    """The labels of run lr-0.1's loss series, checked: the run's own, nothing else of the resource; the join works."""
    (series,) = prometheus.wait_for('tensorboard_scalar{tensorboard_tag="loss"}')
    labels = series["metric"]
    assert labels["mlflow_run_name"] == "lr-0.1"
    assert labels["mlflow_experiment_name"] == experiment
    assert not NOT_LABELS & set(labels), labels
    (joined,) = prometheus.wait_for(JOIN.format(selector='mlflow_run_name="lr-0.1"'))
    assert joined["metric"]["mlflow_user"] == getpass.getuser()
    return labels


def test_the_in_process_backend_gives_its_series_the_same_run_labels(tmp_path: Path, experiment: str) -> None:
    script = tmp_path / "train.py"
    script.write_text(textwrap.dedent(IN_PROCESS.format(experiment=experiment)))
    training = subprocess.Popen(
        [sys.executable, str(script)], cwd=tmp_path, env=subprocess_env(), stdout=subprocess.PIPE, text=True
    )
    try:
        url = training.stdout.readline().strip()  # http://127.0.0.1:<port>/metrics
        assert url.endswith("/metrics"), url
        target = url.removeprefix("http://").removesuffix("/metrics")
        with Prometheus(tmp_path / "prometheus", [target], job_name="train") as prometheus:
            labels = _loss_labels_and_join(prometheus, experiment)
            assert "distributed_rank" not in labels  # not a distributed job
            assert RUN_LABELS & set(labels) == {"mlflow_run_name", "mlflow_experiment_name"}
            # Every series of the process, the point counters included, names the run.
            counters = prometheus.wait_for("tensorboard_points_total")
            assert {item["metric"]["mlflow_run_name"] for item in counters} == {"lr-0.1"}
    finally:
        (tmp_path / "stop").touch()
        training.wait(timeout=60)
    assert training.returncode == 0


ZERO_CODE = (
    """
import time
from pathlib import Path
from torch.utils.tensorboard import SummaryWriter
"""
    + LOOP
)


def test_zero_code_prometheus_gives_its_series_the_same_run_labels(tmp_path: Path, experiment: str) -> None:
    """``OTEL_METRICS_EXPORTER=prometheus opentelemetry-instrument``: the SDK's reader, with the run as labels."""
    script = tmp_path / "train.py"
    script.write_text(textwrap.dedent(ZERO_CODE))
    port = free_port()
    env = subprocess_env(
        OTEL_METRICS_EXPORTER="prometheus",
        OTEL_EXPORTER_PROMETHEUS_HOST="127.0.0.1",
        OTEL_EXPORTER_PROMETHEUS_PORT=str(port),
        OTEL_RESOURCE_ATTRIBUTES="mlflow.run.name=lr-0.1",
        MLFLOW_EXPERIMENT_NAME=experiment,
    )
    training = subprocess.Popen([str(INSTRUMENT), sys.executable, str(script)], cwd=tmp_path, env=env)
    try:
        with Prometheus(tmp_path / "prometheus", [f"127.0.0.1:{port}"], job_name="train") as prometheus:
            _loss_labels_and_join(prometheus, experiment)
    finally:
        (tmp_path / "stop").touch()
        training.wait(timeout=60)
    assert training.returncode == 0
