"""Delivery while MLflow misbehaves: 503/429/timeouts from a proxy, a server down, killed, restarted.

Training runs on its own thread throughout; each test checks that every point is in MLflow exactly
once at the end and that no ``add_scalar`` call ever waited as long as one export timeout.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests
from mlflow_readback import Mlflow, Trainer, assert_exactly, instrumented, provider_for, unique, wait_for
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from support.mlflow_server import MlflowServer

from opentelemetry.exporter.mlflow import MlflowMetricExporter
from opentelemetry.instrumentation.tensorboard.configurator import meter_provider


class FaultyProxy:
    """A real HTTP proxy on 127.0.0.1 in front of MLflow that can fail on purpose.

    Modes: ``pass``; ``503`` and ``429`` (answered without reaching MLflow); ``stall`` (a log-batch
    reaches MLflow and is stored, then the answer comes too late for the client's timeout);
    ``stall-create`` (the same for ``runs/create``: the run exists, the client does not know it).
    """

    def __init__(self, upstream: str, stall_seconds: float) -> None:
        self.upstream = upstream.rstrip("/")
        self.mode = "pass"
        self.faults: collections.Counter[str] = collections.Counter()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _relay(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                mode = proxy.mode
                if mode in ("503", "429"):
                    proxy.faults[mode] += 1
                    self.send_response(int(mode))
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                answer = requests.request(
                    self.command,
                    proxy.upstream + self.path,
                    data=body or None,
                    headers={"Content-Type": self.headers.get("Content-Type", "application/json")},
                    timeout=60,
                )
                if (mode == "stall" and "log-batch" in self.path) or (
                    mode == "stall-create" and "runs/create" in self.path
                ):
                    proxy.faults[mode] += 1
                    time.sleep(stall_seconds)
                try:
                    self.send_response(answer.status_code)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(answer.content)))
                    self.end_headers()
                    self.wfile.write(answer.content)
                except OSError:  # the client gave up waiting
                    pass

            do_GET = do_POST = _relay  # noqa: N815 - http.server dispatches on these names

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _through(proxy: FaultyProxy, experiment: str, tmp_path: Path) -> MlflowMetricExporter:
    """An exporter to MLflow through ``proxy``: 1 s request timeout, 20 s for shutdown."""
    return MlflowMetricExporter(
        proxy.uri,
        experiment_name=experiment,
        spool_dir=tmp_path / "spool",
        request_timeout=1.0,
        export_timeout=20,
        handle_process_exit=False,
    )


def test_503_429_and_timeouts_from_the_server_lose_and_duplicate_nothing(mlflow_server, tmp_path: Path, caplog) -> None:
    experiment = unique("proxy")
    proxy = FaultyProxy(mlflow_server.uri, stall_seconds=2.0)
    exporter = _through(proxy, experiment, tmp_path)
    provider = provider_for(exporter, "proxy", interval_ms=300)
    try:
        with caplog.at_level(logging.INFO), instrumented(provider):
            trainer = Trainer(tmp_path / "train").start()
            for mode, count in (("503", 3), ("429", 2), ("stall", 2)):
                before = exporter.delivered_points
                wait_for(lambda before=before: exporter.delivered_points > before, what="delivery through the proxy")
                proxy.mode = mode
                wait_for(lambda mode=mode, count=count: proxy.faults[mode] >= count, what=f"{count} x {mode}")
                proxy.mode = "pass"
            delivered = exporter.delivered_points
            wait_for(lambda: exporter.delivered_points > delivered, what="delivery after the faults")
            trainer.stop()
            provider.shutdown()
    finally:
        proxy.close()
    assert proxy.faults["503"] and proxy.faults["429"] and proxy.faults["stall"]
    mlflow = Mlflow(mlflow_server.uri)
    run = mlflow.only_run(experiment)
    assert run["info"]["status"] == "FINISHED"
    assert_exactly(mlflow, run["info"]["run_id"], trainer.logged)
    assert trainer.longest_call < exporter.export_timeout
    assert not list((tmp_path / "spool").glob("*.jsonl"))
    assert all(r.exc_info is None for r in caplog.records)
    outages = [r for r in caplog.records if "is unavailable" in r.getMessage()]
    assert 1 <= len(outages) <= 3  # one per outage, not one per attempt


def test_a_run_create_that_times_out_but_happened_leaves_one_run(mlflow_server, tmp_path: Path, caplog) -> None:
    experiment = unique("slow-create")
    proxy = FaultyProxy(mlflow_server.uri, stall_seconds=2.5)
    proxy.mode = "stall-create"
    name = 'it\'s "quoted"'  # both quote characters: no MLflow filter can name it
    exporter = _through(proxy, experiment, tmp_path)
    provider = meter_provider(
        [PeriodicExportingMetricReader(exporter, export_interval_millis=300)],
        resource=Resource.create({"service.name": "slow-create", "mlflow.run.name": name}),
    )
    try:
        with caplog.at_level(logging.INFO), instrumented(provider):
            trainer = Trainer(tmp_path / "train").start()
            wait_for(lambda: proxy.faults["stall-create"] >= 1, what="a runs/create that times out")
            time.sleep(3)  # the stalled create has landed by now; the retries come after it
            proxy.mode = "pass"
            wait_for(lambda: exporter.delivered_points > 0, what="delivery after the slow create")
            trainer.stop()
            provider.shutdown()
    finally:
        proxy.close()
    mlflow = Mlflow(mlflow_server.uri)
    runs = mlflow.runs(experiment)
    assert [r["info"]["run_name"] for r in runs] == [name]  # one run, found again despite its name
    assert runs[0]["info"]["status"] == "FINISHED"
    assert_exactly(mlflow, runs[0]["info"]["run_id"], trainer.logged)


@pytest.mark.slow
def test_server_down_at_start_then_killed_and_restarted(tmp_path: Path, caplog) -> None:
    server = MlflowServer(tmp_path / "server")  # not started yet: nothing listens on its port
    experiment = unique("outage")
    spool = tmp_path / "spool"
    exporter = MlflowMetricExporter(
        server.uri,
        experiment_name=experiment,
        spool_dir=spool,
        max_queue_points=1_000,
        request_timeout=2.0,
        export_timeout=60,
        handle_process_exit=False,
    )
    provider = provider_for(exporter, "outage", interval_ms=500)
    try:
        with caplog.at_level(logging.INFO), instrumented(provider):
            trainer = Trainer(tmp_path / "train", pause=0.01).start()
            time.sleep(20)
            assert exporter.delivered_points == 0
            assert list(spool.glob("*.jsonl")), "more than max_queue_points waited, so some must be on disk"
            server.start()
            wait_for(lambda: exporter.delivered_points > 2_000, what="delivery after the server came up")
            server.stop()  # killed mid-run, with points in flight
            before = exporter.delivered_points
            time.sleep(3)
            server.start()
            wait_for(lambda: exporter.delivered_points > before + 200, what="delivery after the restart")
            trainer.stop()
            provider.shutdown()
        mlflow = Mlflow(server.uri)
        run = mlflow.only_run(experiment)
        assert run["info"]["status"] == "FINISHED"
        assert_exactly(mlflow, run["info"]["run_id"], trainer.logged)
    finally:
        server.stop()
    assert trainer.longest_call < exporter.export_timeout
    assert not list(spool.glob("*.jsonl")) and not list(spool.glob("*.lock"))
    assert len([r for r in caplog.records if "kept on disk" in r.getMessage()]) == 1


def test_refused_credentials_spool_at_once_and_upload_with_the_right_ones(
    tmp_path: Path, caplog, monkeypatch: pytest.MonkeyPatch
) -> None:
    password = f"pw-{unique('basic')}"
    server = MlflowServer(tmp_path / "auth-server", basic_auth_password=password).start()
    try:
        experiment = unique("credentials")
        spool = tmp_path / "spool"
        for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "wrong")
        exporter = MlflowMetricExporter(
            server.uri, experiment_name=experiment, spool_dir=spool, export_timeout=30, handle_process_exit=False
        )
        provider = provider_for(exporter, "credentials", interval_ms=200)
        with caplog.at_level(logging.INFO), instrumented(provider):
            trainer = Trainer(tmp_path / "train", pause=0.002).start()
            wait_for(lambda: any("refused the credentials" in r.getMessage() for r in caplog.records), what="refusal")
            time.sleep(1)  # more exports after the refusal: they must go to disk, not to MLflow
            trainer.stop()
            began = time.monotonic()
            provider.shutdown()
            shutdown_s = time.monotonic() - began
        print(f"shutdown with credentials refused: {shutdown_s:.2f} s, {trainer.steps} steps")
        refusals = [r for r in caplog.records if "refused the credentials" in r.getMessage()]
        assert len(refusals) == 1  # reported once, never retried
        assert "MLFLOW_TRACKING_USERNAME" in refusals[0].getMessage() and "HTTP 401" in refusals[0].getMessage()
        assert exporter.delivered_points == 0
        assert not any("is unavailable" in r.getMessage() for r in caplog.records)
        assert list(spool.glob("*.jsonl"))

        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", password)
        from opentelemetry.exporter.mlflow.spool import upload_spool  # noqa: PLC0415

        assert upload_spool(spool, server.uri) == 0
        auth = requests.Session()
        auth.auth = ("admin", password)
        mlflow = Mlflow(server.uri)
        mlflow.session = auth
        run = mlflow.only_run(experiment)
        assert run["info"]["status"] == "FINISHED"
        assert_exactly(mlflow, run["info"]["run_id"], trainer.logged)
    finally:
        server.stop()
