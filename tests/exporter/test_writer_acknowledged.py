"""What MLflow acknowledged is the writer's to know: params and tags go again only when they change, or failed."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from mlflow_readback import T0, Mlflow, unique

from opentelemetry.exporter.mlflow.delivery import MlflowUnavailable, MlflowWriter
from opentelemetry.exporter.mlflow.mapping import RunBatch, RunKey


class Requests:
    """Records what each ``log-batch`` request of a writer carried (tried, and taken); can make the next ones fail."""

    def __init__(self, writer: MlflowWriter) -> None:
        self.tried: list[dict[str, str]] = []  # the params of every request, refused or failed ones too
        self.sent: list[tuple[dict[str, str], dict[str, str], int]] = []
        self.failing = 0
        transport: Any = writer._transport
        self._log_batch = transport.log_batch
        transport.log_batch = self

    def __call__(self, run_id: str, batch: RunBatch) -> None:
        self.tried.append(dict(batch.params))
        if self.failing:
            self.failing -= 1
            raise MlflowUnavailable("HTTP 503 (made to fail)")
        self._log_batch(run_id, batch)
        self.sent.append((dict(batch.params), dict(batch.tags), len(batch.metrics)))


def _batch(run: RunKey, step: int, params: dict[str, str], tags: dict[str, str]) -> RunBatch:
    return RunBatch(run, [("loss", 1.0 / (step + 1), (T0 + step) * 1000, step)], dict(params), dict(tags))


def test_params_and_tags_mlflow_took_are_sent_again_only_when_they_change(mlflow_server, caplog) -> None:
    experiment = unique("acknowledged")
    run = RunKey("instance-ack", experiment, "ack", tags=(("service.instance.id", "instance-ack"),))
    writer = MlflowWriter(mlflow_server.uri)
    requests = Requests(writer)
    params, tags = {"lr": "0.1"}, {"metric.loss.dataset": "train", "tensorboard.log_dir": "runs/x"}

    writer.write(_batch(run, 0, params, tags))
    writer.write(_batch(run, 1, params, tags))  # the mapper emits them again: MLflow has them
    writer.write(_batch(run, 2, params, {**tags, "metric.loss.dataset": "validation"}))
    assert requests.sent == [
        (params, tags, 1),
        ({}, {}, 1),
        ({}, {"metric.loss.dataset": "validation"}, 1),
    ]

    with caplog.at_level(logging.WARNING):
        writer.write(_batch(run, 3, {"lr": "0.2"}, {}))  # MLflow keeps a param's first value
        refused = len(requests.tried)
        writer.write(_batch(run, 4, {"lr": "0.2"}, {}))
        writer.write(_batch(run, 5, {"lr": "0.2"}, {}))
    refusals = [r for r in caplog.records if "refused param 'lr'" in r.getMessage()]
    assert len(refusals) == 1
    assert {"lr": "0.2"} in requests.tried[:refused]
    assert requests.tried[refused:] == [{}, {}]  # MLflow's answer about that value is final: not tried again
    mlflow = Mlflow(mlflow_server.uri)
    stored = mlflow.only_run(experiment)
    assert mlflow.params(stored) == {"lr": "0.1"}
    assert mlflow.tags(stored)["metric.loss.dataset"] == "validation"
    assert [row[0] for row in mlflow.history(stored["info"]["run_id"], "loss")] == [0, 1, 2, 3, 4, 5]
    writer.close()


def test_what_a_failed_request_carried_goes_again(mlflow_server) -> None:
    experiment = unique("unacknowledged")
    run = RunKey("instance-retry", experiment, "retry", tags=(("service.instance.id", "instance-retry"),))
    writer = MlflowWriter(mlflow_server.uri)
    requests = Requests(writer)
    requests.failing = 1
    with pytest.raises(MlflowUnavailable):
        writer.write(_batch(run, 0, {"lr": "0.1"}, {"note": "first"}))
    writer.write(_batch(run, 0, {"lr": "0.1"}, {"note": "first"}))  # what the sender does: the same batch again
    assert requests.sent == [({"lr": "0.1"}, {"note": "first"}, 1)]
    mlflow = Mlflow(mlflow_server.uri)
    stored = mlflow.only_run(experiment)
    assert mlflow.params(stored) == {"lr": "0.1"} and mlflow.tags(stored)["note"] == "first"
    writer.close()


def test_a_new_writer_sends_everything_once_more(mlflow_server) -> None:
    """What a writer acknowledged lives with it: an upload or a restarted receiver sends params and tags again."""
    experiment = unique("new-writer")
    run = RunKey("instance-new", experiment, "new", tags=(("service.instance.id", "instance-new"),))
    first = MlflowWriter(mlflow_server.uri)
    first.write(_batch(run, 0, {"lr": "0.1"}, {"note": "kept"}))
    first.close()
    second = MlflowWriter(mlflow_server.uri)
    requests = Requests(second)
    second.write(_batch(run, 1, {"lr": "0.1"}, {"note": "kept"}))
    assert requests.sent == [({"lr": "0.1"}, {"note": "kept"}, 1)]  # identical values: MLflow takes them again
    assert len(Mlflow(mlflow_server.uri).runs(experiment)) == 1
    second.close()
