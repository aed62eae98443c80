"""examples/train.py, unchanged, under ``opentelemetry-instrument`` -> real collector -> MLflow and Prometheus.

Everything is real: the collector binary with the shipped otel-collector.yaml, ``tracelet receive``
as its own process, the session's ``mlflow server`` and a Prometheus server scraping the collector.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

from route_support import (
    SCALAR_SERIES,
    TRAIN,
    MlflowReader,
    ReceiverProcess,
    assert_same_points,
    finished,
    instrumented,
    tensorboard_points,
)
from support.collector import Collector
from support.mlflow_server import MlflowServer
from support.prometheus import Prometheus

STEPS = 300


def test_training_script_reaches_mlflow_and_prometheus(
    mlflow_server: MlflowServer, collector_binary: Path, tmp_path: Path, experiment: str
) -> None:
    receiver = ReceiverProcess(mlflow_server.uri, tmp_path / "receiver.log").start()
    collector = Collector(
        collector_binary,
        tmp_path / "storage",
        receiver_endpoint=receiver.endpoint,
        log_path=tmp_path / "collector.log",
    )
    reader = MlflowReader(mlflow_server.uri)
    try:
        with collector, Prometheus(tmp_path / "prometheus", [collector.prometheus_endpoint]) as prometheus:
            finished(instrumented(TRAIN, ["--steps", str(STEPS)], collector, experiment, tmp_path))
            written = tensorboard_points(tmp_path / "runs")
            loss_key = next(key for key in written if key[1] == "train/loss")
            assert len(written[loss_key]) == STEPS
            total = sum(len(points) for points in written.values())
            reader.wait_count(experiment, total, why=lambda: collector.logs() + receiver.logs())

            # MLflow: the run the in-process exporter would make (run name = script name, experiment from
            # MLFLOW_EXPERIMENT_NAME), every point once, with TensorBoard's values and wall times.
            run = reader.only_run(experiment)
            assert run.info.run_name == "train"
            deadline = time.monotonic() + 60  # the last collection, which says how the run ended, may come last
            while run.info.status == "RUNNING" and time.monotonic() < deadline:
                time.sleep(0.2)
                run = reader.only_run(experiment)
            assert run.info.status == "FINISHED"
            assert run.data.params["steps"] == str(STEPS)  # exp.log_params -> run params
            assert set(run.data.metrics) == {tag for _, tag in written}  # one generated log dir: no prefix
            for (_, tag), points in written.items():
                assert_same_points(reader.history(run.info.run_id, tag), points)
            instance = run.data.tags["service.instance.id"]

            # Prometheus: the last training loss, and one series per tag and writer however many steps.
            (_, last_loss, _) = written[loss_key][-1]
            loss_query = SCALAR_SERIES + f', tensorboard_tag="train/loss", instance="{instance}"}}'
            result = prometheus.wait_for(loss_query, predicate=lambda r: len(r) == 1)
            assert math.isclose(float(result[0]["value"][1]), last_loss, rel_tol=2**-23)
            assert result[0]["metric"]["job"] == "train"
            series = prometheus.series(SCALAR_SERIES + f', instance="{instance}"}}')
            assert sorted(s["tensorboard_tag"] for s in series) == sorted(tag for _, tag in written)
            assert len(series) == len(written)  # tags x writers, not steps
    finally:
        receiver.stop()
