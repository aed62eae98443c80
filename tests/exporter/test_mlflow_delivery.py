"""MlflowWriter against the real session ``mlflow server`` (and a real sqlite store)."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from mlflow_readback import MAX_DOUBLE, Mlflow, assert_exactly, unique
from support.mlflow_server import free_port

from opentelemetry.exporter.mlflow.delivery import MlflowUnavailable, MlflowWriter
from opentelemetry.exporter.mlflow.mapping import RunBatch, RunKey


def run_key(experiment: str, name: str = "run") -> RunKey:
    instance = unique("instance")
    return RunKey(instance, experiment, name, None, None, (("service.instance.id", instance),))


def refusals(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if "refused" in r.getMessage()]


def test_exact_retries_store_each_point_once_nan_and_infinities_included(mlflow_server) -> None:
    experiment = unique("retry")
    run = run_key(experiment)
    rows = [("m", math.nan, 1000, 0), ("m", math.inf, 1001, 1), ("m", -math.inf, 1002, 2), ("m", 0.1, 1003, 3)]
    rows += [("m", math.nan, 1004, 4), ("n", 2.0**-1074, 1005, 0), ("n", 1e308, 1006, 1)]
    writer = MlflowWriter(mlflow_server.uri)
    for _ in range(3):
        writer.write(RunBatch(run, list(rows)))
    mlflow = Mlflow(mlflow_server.uri)
    stored = mlflow.only_run(experiment)
    expected: dict[str, list] = {}
    for key, value, timestamp, step in rows:
        expected.setdefault(key, []).append((step, value, timestamp))
    assert_exactly(mlflow, stored["info"]["run_id"], expected)
    assert mlflow.history(stored["info"]["run_id"], "m")[1][1] == MAX_DOUBLE


def test_requests_are_cut_to_mlflow_limits_and_everything_lands(mlflow_server, caplog) -> None:
    experiment = unique("limits")
    run = run_key(experiment)
    batch = RunBatch(
        run,
        [("a", float(i), 10_000 + i, i) for i in range(2_500)],
        {f"p{i}": str(i) for i in range(150)},
        {f"t{i}": "x" * 100 for i in range(250)},
    )
    MlflowWriter(mlflow_server.uri).write(batch)
    mlflow = Mlflow(mlflow_server.uri)
    stored = mlflow.only_run(experiment)
    assert not refusals(caplog)
    assert len(mlflow.history(stored["info"]["run_id"], "a")) == 2_500
    assert mlflow.params(stored) == batch.params
    assert {k: v for k, v in mlflow.tags(stored).items() if k.startswith("t")} == batch.tags


def test_a_refused_entity_is_reported_once_and_the_rest_lands(mlflow_server, caplog) -> None:
    experiment = unique("refused")
    run = run_key(experiment)
    writer = MlflowWriter(mlflow_server.uri)
    writer.write(RunBatch(run, [("loss", 1.0, 1000, 0)], {"lr": "0.1"}))
    with caplog.at_level(logging.WARNING):
        writer.write(RunBatch(run, [("loss", float(i), 1000 + i, i) for i in range(1, 300)], {"lr": "0.2"}))
        writer.write(RunBatch(run, [("loss", float(i), 1000 + i, i) for i in range(300, 400)], {"lr": "0.3"}))
        writer.write(RunBatch(run, [("loss", 1.0, 5000, 2**63)]))  # beyond int64: MLflow would store garbage
    mlflow = Mlflow(mlflow_server.uri)
    stored = mlflow.only_run(experiment)
    assert mlflow.params(stored) == {"lr": "0.1"}
    assert [r[0] for r in mlflow.history(stored["info"]["run_id"], "loss")] == list(range(400))
    param_reports = [r for r in refusals(caplog) if "'lr'" in r.getMessage()]
    assert len(param_reports) == 1
    assert "Changing param values is not allowed" in param_reports[0].getMessage()
    assert param_reports[0].exc_info is None
    assert len([r for r in caplog.records if "outside int64" in r.getMessage()]) == 1


def test_runs_are_found_again_by_instance_attached_by_id_and_replaced_when_deleted(mlflow_server, caplog) -> None:
    experiment = unique("resolve")
    run = run_key(experiment)
    MlflowWriter(mlflow_server.uri).write(RunBatch(run, [("a", 1.0, 1000, 0)]))
    MlflowWriter(mlflow_server.uri).write(RunBatch(run, [("a", 2.0, 1001, 1)]))  # e.g. a restarted receiver
    mlflow = Mlflow(mlflow_server.uri)
    first = mlflow.only_run(experiment)
    run_id = first["info"]["run_id"]
    assert first["info"]["run_name"] == "run" and mlflow.tags(first)["service.instance.id"] == run.instance_id
    assert len(mlflow.history(run_id, "a")) == 2

    attached = RunKey(unique("other"), None, None, run_id)
    writer = MlflowWriter(mlflow_server.uri)
    writer.write(RunBatch(attached, [("b", 1.0, 1000, 0)]))
    assert len(mlflow.history(run_id, "b")) == 1

    mlflow.session.post(mlflow.api + "runs/delete", json={"run_id": run_id}, timeout=30).raise_for_status()
    with caplog.at_level(logging.WARNING):
        writer.write(RunBatch(attached, [("b", 2.0, 1001, 1)]))
    runs = mlflow.runs(experiment)
    assert len(runs) == 1 and runs[0]["info"]["run_id"] != run_id
    assert mlflow.history(runs[0]["info"]["run_id"], "b") == [(1, 2.0, 1001)]
    assert any(run_id in r.getMessage() for r in caplog.records)
    assert writer.finish(attached, "FINISHED")
    assert mlflow.run(runs[0]["info"]["run_id"])["info"]["status"] == "FINISHED"


def test_an_unreachable_server_raises_the_retryable_error() -> None:
    writer = MlflowWriter(f"http://127.0.0.1:{free_port()}", timeout=2)
    with pytest.raises(MlflowUnavailable):
        writer.write(RunBatch(run_key("x"), [("a", 1.0, 1, 0)]))


def test_sqlite_store_without_a_server(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run = run_key("embedded")
    rows = [("m", math.nan, 1000, 0), ("m", math.inf, 1001, 1), ("m", 0.5, 1002, 2)]
    writer = MlflowWriter(uri)
    writer.write(RunBatch(run, list(rows), {"lr": "0.1"}))
    writer.write(RunBatch(run, list(rows)))  # the exact retry
    assert writer.finish(run, "KILLED")
    client = MlflowClient(uri)
    (stored,) = client.search_runs([client.get_experiment_by_name("embedded").experiment_id])
    assert stored.info.status == "KILLED" and stored.data.params == {"lr": "0.1"}
    history = sorted(client.get_metric_history(stored.info.run_id, "m"), key=lambda m: m.step)
    assert [(m.step, m.timestamp) for m in history] == [(0, 1000), (1, 1001), (2, 1002)]
    assert math.isnan(history[0].value) and history[1].value == MAX_DOUBLE and history[2].value == 0.5


def test_runs_of_one_process_with_different_names_stay_apart(mlflow_server) -> None:
    experiment = unique("names")
    instance = unique("instance")  # the SDK gives every provider of a process the same one
    first = RunKey(instance, experiment, "first", None, None, (("service.instance.id", instance),))
    second = RunKey(instance, experiment, "second", None, None, (("service.instance.id", instance),))
    MlflowWriter(mlflow_server.uri).write(RunBatch(first, [("a", 1.0, 1000, 0)]))
    MlflowWriter(mlflow_server.uri).write(RunBatch(second, [("a", 2.0, 1000, 0)]))
    MlflowWriter(mlflow_server.uri).write(RunBatch(first, [("a", 3.0, 1001, 1)]))
    mlflow = Mlflow(mlflow_server.uri)
    runs = {run["info"]["run_name"]: run["info"]["run_id"] for run in mlflow.runs(experiment)}
    assert set(runs) == {"first", "second"}
    assert mlflow.history(runs["first"], "a") == [(0, 1.0, 1000), (1, 3.0, 1001)]
    assert mlflow.history(runs["second"], "a") == [(0, 2.0, 1000)]


@pytest.mark.parametrize("store", ["server", "sqlite"])
def test_experiments_it_creates_are_training_experiments_and_others_keep_their_kind(
    store: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    uri = request.getfixturevalue("mlflow_server").uri if store == "server" else f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    created, genai, untagged = unique("created"), unique("genai"), unique("untagged")
    client.create_experiment(genai, tags={"mlflow.experimentKind": "genai_development"})
    client.create_experiment(untagged)
    writer = MlflowWriter(uri)
    for experiment in (created, genai, untagged):
        run = run_key(experiment)
        run = RunKey(run.instance_id, experiment, "run", tags=(*run.tags, ("mlflow.user", "me")))
        writer.write(RunBatch(run, [("a", 1.0, 1000, 0)]))
    kinds = {
        name: client.get_experiment_by_name(name).tags.get("mlflow.experimentKind")
        for name in (created, genai, untagged)
    }
    assert kinds == {created: "custom_model_development", genai: "genai_development", untagged: None}
    (run,) = client.search_runs([client.get_experiment_by_name(created).experiment_id])
    assert run.info.user_id == "me"
