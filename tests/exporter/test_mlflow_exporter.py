"""The exporter end to end in this process: TensorBoard calls -> OpenTelemetry -> real MLflow."""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from mlflow_readback import T0, Mlflow, assert_exactly, instrumented, provider_for, unique, wait_for
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from support.mlflow_server import free_port
from tensorboardX import SummaryWriter as XWriter
from torch.utils.tensorboard import SummaryWriter

from opentelemetry.exporter.mlflow import MlflowMetricExporter
from opentelemetry.exporter.mlflow.mapping import RunBatch
from opentelemetry.exporter.mlflow.spool import read
from opentelemetry.instrumentation.tensorboard.configurator import meter_provider


def special(step: int) -> float | None:
    """NaN, +inf and -inf now and then: the values a user most needs to see."""
    return (math.nan, math.inf, -math.inf)[(step // 997) % 3] if step % 997 == 13 else None


@pytest.mark.slow
def test_100k_points_from_two_writers_arrive_exactly_once(mlflow_env, tmp_path: Path, caplog) -> None:
    experiment = unique("volume")
    exporter = MlflowMetricExporter(
        experiment_name=experiment, spool_dir=tmp_path / "spool", export_timeout=180, handle_process_exit=False
    )
    provider = provider_for(exporter, "volume", interval_ms=1000)
    writers = {
        "train": (SummaryWriter(str(tmp_path / "runs" / "train")), ("Loss", "Accuracy", "lr", "grad_norm", "acc@top1")),
        "validation": (XWriter(str(tmp_path / "runs" / "validation")), ("Loss", "Accuracy", "lr", "grad_norm", "ppl")),
    }
    expected: dict[str, list[tuple[int, float, int]]] = {}
    with caplog.at_level(logging.WARNING), instrumented(provider):
        for step in range(10_000):
            for offset, (label, (writer, tags)) in enumerate(writers.items()):
                for index, tag in enumerate(tags):
                    value = special(step + index)
                    value = step * 0.25 + index + offset / 2 if value is None else value
                    writer.add_scalar(tag, value, step, walltime=T0 + step)
                    key = f"{label}/{tag.replace('@', '_')}"
                    expected.setdefault(key, []).append((step, value, (T0 + step) * 1000))
        for writer, _tags in writers.values():
            writer.close()
        provider.shutdown()

    assert sum(len(rows) for rows in expected.values()) == 100_000
    assert exporter.delivered_points == 100_000
    mlflow = Mlflow(mlflow_env.uri)
    run = mlflow.only_run(experiment)
    assert run["info"]["status"] == "FINISHED" and run["info"]["run_name"] == "volume"
    assert_exactly(mlflow, run["info"]["run_id"], expected)
    renamed = [r for r in caplog.records if "acc@top1" in r.getMessage()]
    assert len(renamed) == 1 and "train/acc_top1" in renamed[0].getMessage()
    assert not list((tmp_path / "spool").glob("*.jsonl"))


def test_a_changed_hyperparameter_is_reported_once_and_the_points_land(mlflow_env, tmp_path: Path, caplog) -> None:
    experiment = unique("hparams")
    exporter = MlflowMetricExporter(experiment_name=experiment, spool_dir=tmp_path / "spool", handle_process_exit=False)
    provider = provider_for(exporter, "hparams", interval_ms=60_000)
    expected: dict[str, list] = {"train/loss": []}
    with caplog.at_level(logging.WARNING), instrumented(provider):
        writer = SummaryWriter(str(tmp_path / "train"))
        writer.add_hparams({"lr": 0.1, "layers": 2}, {"hp/acc": 0.5}, run_name=".")
        provider.force_flush()
        for lr in (0.2, 0.3):  # MLflow keeps a param's first value
            writer.add_hparams({"lr": lr, "layers": 2}, {"hp/acc": 0.5}, run_name=".")
            for step in range(50):
                writer.add_scalar("loss", step * 1.5, step, walltime=T0 + step)
                expected["train/loss"].append((step, step * 1.5, (T0 + step) * 1000))
            provider.force_flush()
        writer.close()
        provider.shutdown()
    mlflow = Mlflow(mlflow_env.uri)
    run = mlflow.only_run(experiment)
    assert mlflow.params(run) == {"lr": "0.1", "layers": "2"}
    assert len(mlflow.history(run["info"]["run_id"], "train/loss")) == 50  # 100 calls, 50 distinct points
    reports = [r for r in caplog.records if "refused param 'lr'" in r.getMessage()]
    assert len(reports) == 1 and "Changing param values is not allowed" in reports[0].getMessage()
    assert all(r.exc_info is None for r in caplog.records)


def test_a_forked_child_never_touches_the_parents_run(mlflow_env, tmp_path: Path) -> None:
    experiment = unique("fork")
    exporter = MlflowMetricExporter(experiment_name=experiment, spool_dir=tmp_path / "spool", handle_process_exit=False)
    provider = provider_for(exporter, "fork", interval_ms=60_000)
    with instrumented(provider):
        writer = SummaryWriter(str(tmp_path / "train"))
        for step in range(10):
            writer.add_scalar("loss", float(step), step, walltime=T0 + step)
        provider.force_flush()
        assert exporter.delivered_points == 10
        for step in range(10, 20):  # queued in the parent when the child is forked
            writer.add_scalar("loss", float(step), step, walltime=T0 + step)
        pid = os.fork()
        if pid == 0:  # the child: log, flush, shut down, exit; none of it may reach MLflow
            code = 0
            try:
                # The parent's writer has no writer thread here; a DataLoader worker would open its own.
                child_writer = SummaryWriter(str(tmp_path / "child"))
                for step in range(1000, 1010):
                    child_writer.add_scalar("loss", -1.0, step, walltime=T0 + step)
                child_writer.close()
                provider.force_flush()
                provider.shutdown()
            except BaseException:  # noqa: BLE001 - the child reports through its exit code
                code = 1
            os._exit(code)
        assert os.waitpid(pid, 0)[1] == 0
        mlflow = Mlflow(mlflow_env.uri)
        run = mlflow.only_run(experiment)
        assert run["info"]["status"] == "RUNNING"  # the child's shutdown did not end it
        provider.shutdown()
        writer.close()
    run = mlflow.only_run(experiment)
    assert run["info"]["status"] == "FINISHED"
    assert [row[0] for row in mlflow.history(run["info"]["run_id"], "train/loss")] == list(range(20))


def test_no_arguments_and_no_server_write_the_local_sqlite_store(monkeypatch, tmp_path: Path) -> None:
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_EXPERIMENT_ID", "MLFLOW_RUN_ID"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TRACELET_SPOOL_DIR", str(tmp_path / "spool"))
    monkeypatch.chdir(tmp_path)
    exporter = MlflowMetricExporter(handle_process_exit=False)  # SIGTERM must still stop pytest
    provider = provider_for(exporter, "embedded", interval_ms=60_000)
    with instrumented(provider):
        writer = SummaryWriter(str(tmp_path / "runs" / "train"))
        for step in range(300):
            writer.add_scalar("loss", math.nan if step == 3 else step / 7, step, walltime=T0 + step)
        writer.close()
        provider.shutdown()
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (run,) = client.search_runs(["0"])
    assert run.info.status == "FINISHED" and run.info.run_name == "embedded"
    history = sorted(client.get_metric_history(run.info.run_id, "train/loss"), key=lambda m: m.step)
    assert [m.step for m in history] == list(range(300))
    assert math.isnan(history[3].value) and history[10].value == 10 / 7


def test_spooled_rows_keep_their_order_across_spills_and_shutdown(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    exporter = MlflowMetricExporter(
        f"http://127.0.0.1:{free_port()}",  # MLflow never answers
        spool_dir=spool,
        max_queue_points=100,
        export_timeout=1,
        request_timeout=1,
        handle_process_exit=False,
    )
    reader = PeriodicExportingMetricReader(exporter, export_interval_millis=3_600_000)
    provider = meter_provider([reader], resource=Resource.create({"service.name": "order"}))
    with instrumented(provider):
        writer = SummaryWriter(str(tmp_path / "train"))
        step = 0
        for size in (50, 150, 30, 150, 20):  # the first is in flight, then spills, then memory
            for _ in range(size):
                writer.add_scalar("loss", float(step), step, walltime=T0 + step)
                step += 1
            reader.collect()
            if step == 50:
                wait_for(lambda: exporter._sender._inflight is not None, what="the first request in flight")
        writer.close()
        provider.shutdown()
    steps = [
        m[3]
        for path in sorted(spool.glob("*.jsonl"))
        for entry in read(path)[1]
        if isinstance(entry, RunBatch)
        for m in entry.metrics
    ]
    assert steps == list(range(400))
