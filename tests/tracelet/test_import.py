"""``tracelet import`` against a real ``mlflow server``: event files in, the same points out, each once.

The expected points are read with tbparse (a reader independent of tracelet's), so a test fails
if the import moved a step, a wall time or a value.
"""

from __future__ import annotations

import math
import subprocess
import sys
import textwrap
import uuid
from decimal import Decimal
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from support.env import subprocess_env
from support.mlflow_server import MlflowServer
from support.otlp_sink import OtlpSink
from tbparse import SummaryReader
from torch.utils.tensorboard import SummaryWriter

TRACELET = str(Path(sys.executable).with_name("tracelet"))
MAX_DOUBLE = 1.7976931348623157e308
T0 = 1_700_000_000.0


def _import(*args: str, cwd: Path, uri: str) -> subprocess.CompletedProcess[str]:
    env = subprocess_env(MLFLOW_TRACKING_URI=uri)
    return subprocess.run(
        [TRACELET, "import", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300, check=False
    )


def _experiment() -> str:
    return f"import-{uuid.uuid4().hex[:8]}"


def _ms(wall_time: float) -> int:
    """The wall time's milliseconds, floored, computed exactly (the double's decimal value)."""
    return math.floor(Decimal(wall_time) * 1000)


def _stored(value: float) -> float:
    return (MAX_DOUBLE if value > 0 else -MAX_DOUBLE) if math.isinf(value) else value


def _same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == b


def _expected(log_dir: Path) -> dict[str, list[tuple[int, int, float]]]:
    """Per tag, (step, ms, value) as the event files under ``log_dir`` hold them (tbparse, this dir only)."""
    frame = SummaryReader(str(log_dir), pivot=False, extra_columns={"wall_time", "dir_name"}).scalars
    frame = frame[frame["dir_name"] == ""]
    out: dict[str, list[tuple[int, int, float]]] = {}
    for row in frame.itertuples():
        out.setdefault(row.tag, []).append((int(row.step), _ms(float(row.wall_time)), float(row.value)))
    return {tag: sorted(rows, key=lambda r: (r[0], r[1])) for tag, rows in out.items()}


def _stored_rows(client: MlflowClient, run_id: str, key: str) -> list[tuple[int, int, float]]:
    return sorted(((m.step, m.timestamp, m.value) for m in client.get_metric_history(run_id, key)), key=lambda r: r[:2])


def _runs(client: MlflowClient, experiment: str) -> dict[str, object]:
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return {}
    return {run.info.run_name: run for run in client.search_runs([found.experiment_id])}


def _assert_same(stored: list[tuple[int, int, float]], expected: list[tuple[int, int, float]]) -> None:
    assert [r[:2] for r in stored] == [r[:2] for r in expected]
    assert all(_same(s[2], _stored(e[2])) for s, e in zip(stored, expected, strict=True))


def _write(log_dir: Path, steps: range, start: float = T0) -> None:
    writer = SummaryWriter(str(log_dir))
    for step in steps:
        # Fractions of a millisecond that rounding would carry into the next one, and non-finite values.
        wall = start + step * 0.0173 + 0.0009996
        loss = math.nan if step == 7 else math.inf if step == 8 else 1.0 / (step + 1)
        writer.add_scalar("loss", loss, step * 3, walltime=wall)
        writer.add_scalar("acc/top1", step * 0.01, step * 3, walltime=wall)
    writer.close()


def test_every_scalar_lands_with_its_step_wall_time_and_value_and_a_second_import_adds_nothing(
    mlflow_server: MlflowServer, tmp_path: Path
) -> None:
    runs = tmp_path / "runs"
    _write(runs / "Dec01_13-28-41_host", range(200))
    writer = SummaryWriter(str(runs / "resnet" / "train"))
    for step in range(50):
        writer.add_scalars("loss", {"a": step * 0.5, "b": -step}, step, walltime=T0 + step)
    writer.add_hparams({"lr": 0.001, "batch": 32, "optimizer": "adam"}, {"hp/acc": 0.75})
    writer.close()
    experiment = _experiment()

    done = _import(str(runs), "--experiment", experiment, cwd=tmp_path, uri=mlflow_server.uri)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 run(s) (2 new, 0 existing)" in done.stdout
    assert "501 point(s) sent, 0 already there, 3 param(s)" in done.stdout

    client = MlflowClient(mlflow_server.uri)
    found = _runs(client, experiment)
    assert sorted(found) == ["Dec01_13-28-41_host", "resnet/train"]
    plain = found["Dec01_13-28-41_host"]
    assert plain.info.status == "FINISHED"
    assert plain.data.tags["tensorboard.log_dir"] == str(runs / "Dec01_13-28-41_host")
    expected = _expected(runs / "Dec01_13-28-41_host")
    assert sorted(plain.data.metrics) == ["acc/top1", "loss"]  # the dir names the run: no writer prefix
    for tag, rows in expected.items():
        _assert_same(_stored_rows(client, plain.info.run_id, tag), rows)

    train = found["resnet/train"]
    assert train.data.tags["tensorboard.log_dir.train"] == str(runs / "resnet" / "train")
    assert train.data.params == {"lr": "0.001", "batch": "32", "optimizer": "adam"}
    # add_scalars' sub-directories and add_hparams' metric belong to the writer's run, keyed as live capture keys them.
    assert sorted(train.data.metrics) == ["train/hp/acc", "train/loss/a", "train/loss/b"]
    for key in ("a", "b"):
        rows = _expected(runs / "resnet" / "train" / f"loss_{key}")["loss"]
        _assert_same(_stored_rows(client, train.info.run_id, f"train/loss/{key}"), rows)

    again = _import(str(runs), "--experiment", experiment, cwd=tmp_path, uri=mlflow_server.uri)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "2 run(s) (0 new, 2 existing)" in again.stdout
    assert "0 point(s) sent, 501 already there, 0 param(s)" in again.stdout
    assert sorted(_runs(client, experiment)) == ["Dec01_13-28-41_host", "resnet/train"]
    assert len(_stored_rows(client, plain.info.run_id, "loss")) == 200


def test_a_second_import_after_training_went_on_sends_only_the_new_points(
    mlflow_server: MlflowServer, tmp_path: Path
) -> None:
    log_dir = tmp_path / "lightning_logs" / "version_0"
    _write(log_dir, range(100))
    experiment = _experiment()
    first = _import(str(tmp_path / "lightning_logs"), "--experiment", experiment, cwd=tmp_path, uri=mlflow_server.uri)
    assert "200 point(s) sent" in first.stdout, first.stdout + first.stderr

    _write(log_dir, range(100, 160), start=T0 + 1000)  # resumed: a second event file in the same log dir
    second = _import(str(tmp_path / "lightning_logs"), "--experiment", experiment, cwd=tmp_path, uri=mlflow_server.uri)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "1 run(s) (0 new, 1 existing)" in second.stdout
    assert "120 point(s) sent, 200 already there" in second.stdout

    client = MlflowClient(mlflow_server.uri)
    (run,) = _runs(client, experiment).values()
    assert run.info.run_name == "version_0"
    for tag, rows in _expected(log_dir).items():
        _assert_same(_stored_rows(client, run.info.run_id, tag), rows)


LIVE = """
import math, sys
import tracelet
from torch.utils.tensorboard import SummaryWriter

tracelet.start_logging(exp_name="live", project=sys.argv[1], backend="mlflow")
writer = SummaryWriter("runs/live")
for step in range(150):
    if step == 100:
        tracelet.stop_logging()  # from here on the run gets nothing: as if the job had lost its exporter
    writer.add_scalar("loss", 1.0 / (step + 1), step)
writer.close()
"""


def test_a_run_live_capture_fed_gets_only_the_points_it_lacks(mlflow_server: MlflowServer, tmp_path: Path) -> None:
    experiment = _experiment()
    script = tmp_path / "train.py"
    script.write_text(textwrap.dedent(LIVE))
    env = subprocess_env(MLFLOW_TRACKING_URI=mlflow_server.uri)
    trained = subprocess.run(
        [sys.executable, str(script), experiment], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert trained.returncode == 0, trained.stderr
    client = MlflowClient(mlflow_server.uri)
    (live,) = _runs(client, experiment).values()
    assert live.data.tags["tensorboard.log_dir.live"] == "runs/live"  # relative, as the script gave it
    assert len(_stored_rows(client, live.info.run_id, "live/loss")) == 100

    done = _import("runs", "--experiment", experiment, cwd=tmp_path, uri=mlflow_server.uri)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 run(s) (0 new, 1 existing)" in done.stdout
    assert "50 point(s) sent, 100 already there" in done.stdout

    after = _runs(client, experiment)
    assert list(after) == ["live"] and after["live"].info.run_id == live.info.run_id
    assert after["live"].info.status == live.info.status  # a run the import did not make keeps its status
    rows = _stored_rows(client, live.info.run_id, "live/loss")
    expected = _expected(tmp_path / "runs" / "live")["loss"]
    assert [r[:2] for r in rows] == [r[:2] for r in expected]  # every step once, with its wall time
    # The live points keep the value the script passed; the added ones are the file's 32-bit values.
    assert [r[2] for r in rows[:100]] == [1.0 / (step + 1) for step in range(100)]
    assert [r[2] for r in rows[100:]] == [r[2] for r in expected[100:]]


def test_a_truncated_file_imports_what_precedes_the_cut_and_says_so(
    mlflow_server: MlflowServer, tmp_path: Path
) -> None:
    log_dir = tmp_path / "runs" / "cut"
    _write(log_dir, range(40))
    (events,) = log_dir.glob("events.out.tfevents.*")
    events.write_bytes(events.read_bytes()[:-7])  # the writer was killed inside its last record
    experiment = _experiment()

    done = _import(str(tmp_path / "runs"), "--experiment", experiment, cwd=tmp_path, uri=mlflow_server.uri)
    assert done.returncode == 1
    assert "79 point(s) sent" in done.stdout  # all but the last point
    assert f"{events}: truncated after event 80" in done.stdout
    assert "the file ends inside a record" in done.stdout
    assert "Traceback" not in done.stderr
    client = MlflowClient(mlflow_server.uri)
    (run,) = _runs(client, experiment).values()
    assert len(_stored_rows(client, run.info.run_id, "cut/loss")) == 40
    assert len(_stored_rows(client, run.info.run_id, "cut/acc/top1")) == 39


def test_mistakes_get_one_line(mlflow_server: MlflowServer, tmp_path: Path) -> None:
    missing = _import(str(tmp_path / "nowhere"), cwd=tmp_path, uri=mlflow_server.uri)
    assert missing.returncode == 2 and "nowhere: no such directory" in missing.stderr
    (tmp_path / "empty").mkdir()
    empty = _import(str(tmp_path / "empty"), cwd=tmp_path, uri=mlflow_server.uri)
    assert empty.returncode == 2 and "no TensorBoard event files" in empty.stderr
    assert "Traceback" not in missing.stderr + empty.stderr


def test_otlp_gets_every_point_as_live_capture_sends_it(tmp_path: Path) -> None:
    log_dir = tmp_path / "runs" / "train"
    _write(log_dir, range(30))
    with OtlpSink() as sink:
        url = f"http://127.0.0.1:{sink.server_address[1]}"
        done = _import(str(tmp_path / "runs"), "--otlp", url, "--experiment", "cifar", cwd=tmp_path, uri="")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "60 point(s) sent" in done.stdout and f"OTLP {url}/v1/metrics" in done.stdout
    got: dict[str, list[tuple[int, int, float]]] = {}
    for request in sink.requests:
        for resource_metrics in request.resource_metrics:
            resource = {a.key: a.value.string_value for a in resource_metrics.resource.attributes}
            assert resource["mlflow.run.name"] == "train" and resource["mlflow.experiment.name"] == "cifar"
            for metric in resource_metrics.scope_metrics[0].metrics:
                assert metric.name == "tensorboard.scalar"
                for point in metric.gauge.data_points:
                    attributes = {a.key: a.value.string_value for a in point.attributes}
                    assert attributes["tensorboard.log_dir"] == str(log_dir)
                    for exemplar in point.exemplars:
                        (step,) = [a.value.int_value for a in exemplar.filtered_attributes]
                        row = (step, exemplar.time_unix_nano // 1_000_000, exemplar.as_double)
                        got.setdefault(attributes["tensorboard.tag"], []).append(row)
    expected = _expected(log_dir)
    assert sorted(got) == sorted(expected)
    for tag, rows in expected.items():
        assert [r[:2] for r in got[tag]] == [r[:2] for r in rows]
        assert all(_same(g[2], e[2]) for g, e in zip(got[tag], rows, strict=True))


@pytest.fixture(autouse=True)
def _no_stray_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("MLFLOW_EXPERIMENT_NAME", "MLFLOW_RUN_ID", "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(name, raising=False)
