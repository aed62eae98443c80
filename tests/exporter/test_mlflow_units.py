"""Unit tests of the exporter's pure parts: request packing, spool lines, configuration."""

from __future__ import annotations

import math
from collections import deque
from pathlib import Path

import pytest
from opentelemetry.sdk.metrics import Counter, Histogram, ObservableGauge, UpDownCounter, _Gauge
from opentelemetry.sdk.metrics.export import AggregationTemporality

from opentelemetry.exporter.mlflow import MlflowMetricExporter
from opentelemetry.exporter.mlflow.delivery import (
    MAX_ENTITIES,
    MAX_METRICS,
    MAX_PARAMS,
    MAX_TAGS,
    MlflowWriter,
    chunks,
    public_uri,
    take,
)
from opentelemetry.exporter.mlflow.mapping import RunBatch, RunKey
from opentelemetry.exporter.mlflow.spool import Spool, Status, decode, encode, read

RUN = RunKey("instance-1", "exp", "name", None, None, (("service.instance.id", "instance-1"),))
OTHER = RunKey("instance-2")


def metrics(key: str, n: int, start: int = 0) -> list[tuple[str, float, int, int]]:
    return [(key, float(i), 1000 + i, i) for i in range(start, start + n)]


def test_take_respects_mlflow_limits_and_keeps_order() -> None:
    batch = RunBatch(
        RUN,
        metrics("a", 2500) + metrics("b", 700),
        {f"p{i}": str(i) for i in range(150)},
        {f"t{i}": str(i) for i in range(250)},
    )
    requests = chunks(batch)
    for request in requests:
        assert len(request.metrics) <= MAX_METRICS
        assert len(request.params) <= MAX_PARAMS
        assert len(request.tags) <= MAX_TAGS
        assert len(request.metrics) + len(request.params) + len(request.tags) <= MAX_ENTITIES
    assert [m for r in requests for m in r.metrics] == batch.metrics
    assert {k: v for r in requests for k, v in r.params.items()} == batch.params
    assert {k: v for r in requests for k, v in r.tags.items()} == batch.tags
    assert len(batch.metrics) == 3200  # chunks() leaves its argument alone


def test_take_merges_consecutive_batches_of_a_run_only() -> None:
    queue = deque(
        [RunBatch(RUN, metrics("a", 10)), RunBatch(RUN, metrics("a", 10, 10)), RunBatch(OTHER, metrics("a", 5))]
    )
    first = take(queue)
    assert first.run == RUN and [m[3] for m in first.metrics] == list(range(20))
    second = take(queue)
    assert second.run == OTHER and len(second.metrics) == 5
    assert not queue


def test_a_changed_param_starts_a_new_request() -> None:
    queue = deque([RunBatch(RUN, metrics("a", 3), {"lr": "0.1"}), RunBatch(RUN, metrics("a", 3, 3), {"lr": "0.2"})])
    first, second = take(queue), take(queue)
    assert first.params == {"lr": "0.1"} and second.params == {"lr": "0.2"}
    assert [m[3] for m in first.metrics + second.metrics] == list(range(6))


def test_spool_lines_round_trip_non_finite_values(tmp_path: Path) -> None:
    batch = RunBatch(RUN, [("m", math.nan, 1, 0), ("m", math.inf, 2, 1), ("m", -math.inf, 3, 2), ("m", 0.1, 4, 3)])
    batch.params["lr"] = "0.1"
    line = encode(batch)
    assert "NaN" in line and "Infinity" in line
    back = decode(line)
    assert back.run == RUN and back.params == {"lr": "0.1"}
    assert [m[0] for m in back.metrics] == ["m"] * 4
    assert math.isnan(back.metrics[0][1]) and back.metrics[1][1] == math.inf and back.metrics[2][1] == -math.inf
    assert back.metrics[3] == ("m", 0.1, 4, 3)

    spool = Spool(tmp_path, "http://user:secret@127.0.0.1:5000", "7")
    path = spool.write([batch, Status(RUN, "KILLED", 99)])
    assert (tmp_path / f"{spool.prefix}.lock").exists()
    header, entries = read(path)
    assert header["tracking_uri"] == "http://127.0.0.1:5000" and header["experiment_id"] == "7"
    assert entries[1] == Status(RUN, "KILLED", 99)
    assert not list(tmp_path.glob("*.tmp"))
    spool.release()
    assert not (tmp_path / f"{spool.prefix}.lock").exists()


def test_public_uri_drops_credentials() -> None:
    assert public_uri("https://u:p@host:8443/prefix") == "https://host:8443/prefix"
    assert public_uri("sqlite:////tmp/x.db") == "sqlite:////tmp/x.db"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_queue_points": 0}, "max_queue_points"),
        ({"export_timeout": -1}, "export_timeout"),
        ({"request_timeout": "10"}, "request_timeout"),
        ({"tracking_uri": "/tmp/mlruns"}, "file store"),
        ({"tracking_uri": "http://"}, "no host"),
    ],
)
def test_bad_arguments_name_what_is_wrong(kwargs: dict, message: str, tmp_path: Path) -> None:
    kwargs = {"tracking_uri": "http://127.0.0.1:1", "spool_dir": tmp_path, **kwargs}
    with pytest.raises(ValueError, match=message):
        MlflowMetricExporter(handle_process_exit=False, **kwargs)


def test_no_argument_construction_reads_mlflow_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_EXPERIMENT_ID", "MLFLOW_RUN_ID"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TRACELET_SPOOL_DIR", str(tmp_path / "spool"))
    monkeypatch.chdir(tmp_path)
    exporter = MlflowMetricExporter(handle_process_exit=False)
    assert exporter.tracking_uri == f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert exporter.spool_dir == tmp_path / "spool"
    assert exporter.run_id is None and exporter.experiment_id is None

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5999")
    monkeypatch.setenv("MLFLOW_EXPERIMENT_ID", "12")
    monkeypatch.setenv("MLFLOW_RUN_ID", "abc")
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "from-env")
    exporter = MlflowMetricExporter(handle_process_exit=False)
    assert (exporter.tracking_uri, exporter.experiment_id, exporter.run_id) == ("http://127.0.0.1:5999", "12", "abc")
    assert exporter.experiment_name == "from-env"


def test_delta_temporality_for_every_instrument_kind(tmp_path: Path) -> None:
    exporter = MlflowMetricExporter("http://127.0.0.1:1", spool_dir=tmp_path, handle_process_exit=False)
    for kind in (Counter, UpDownCounter, Histogram, ObservableGauge, _Gauge):
        assert exporter._preferred_temporality[kind] is AggregationTemporality.DELTA


def test_writer_refuses_bad_arguments() -> None:
    with pytest.raises(ValueError, match="timeout"):
        MlflowWriter("http://127.0.0.1:1", timeout=0)
    with pytest.raises(ValueError, match="status"):
        MlflowWriter("http://127.0.0.1:1").finish(RUN, "DONE")


def test_a_login_page_answering_200_is_named_as_such() -> None:
    import threading  # noqa: PLC0415
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer  # noqa: PLC0415

    from opentelemetry.exporter.mlflow.delivery import MlflowUnavailable, MlflowWriter  # noqa: PLC0415
    from opentelemetry.exporter.mlflow.mapping import RunBatch  # noqa: PLC0415

    class Login(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def _page(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            body = b"<html><form>Sign in</form></html>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = _page  # noqa: N815

    server = ThreadingHTTPServer(("127.0.0.1", 0), Login)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        writer = MlflowWriter(f"http://127.0.0.1:{server.server_address[1]}", timeout=5)
        with pytest.raises(MlflowUnavailable, match=r"not an MLflow answer .*text/html.*login page"):
            writer.write(RunBatch(RUN, [("loss", 1.0, 1, 0)]))
    finally:
        server.shutdown()
        server.server_close()
