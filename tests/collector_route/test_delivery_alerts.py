"""A route to MLflow that stops delivering shows in Prometheus, from the collector's own metrics.

Real collector (shipped otel-collector.yaml, its telemetry endpoint on 127.0.0.1), real
``tracelet receive`` writing to the session's ``mlflow server``, a real Prometheus scraping the
collector's telemetry with prometheus/tracelet-alerts.yml loaded, a real training script under
``opentelemetry-instrument``. The collector retries a receiver that is down without counting a
failure, so the outage shows as a sending queue that grows while nothing is sent; a refusal for
good (a wrong token) counts the dropped points.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from route_support import PACED, MlflowReader, ReceiverProcess, assert_paced_run, finished, instrumented, wait_log
from support.collector import REPO_ROOT, Collector
from support.mlflow_server import MlflowServer
from support.prometheus import Prometheus

RULES = REPO_ROOT / "prometheus" / "tracelet-alerts.yml"
STEPS = 400
PAUSE = "0.01"  # at least 4 s of logging: several exports reach the collector while the receiver is down

QUEUE = 'otelcol_exporter_queue_size{job="otelcol", exporter="otlp_http"}'
SENT = 'otelcol_exporter_sent_metric_points{job="otelcol", exporter="otlp_http"}'
DROPPED = 'otelcol_exporter_send_failed_metric_points{job="otelcol", exporter="otlp_http"}'


def telemetry_prometheus(collector: Collector, workdir: Path) -> Prometheus:
    """Prometheus scraping the collector's own metrics every second, the alert rules evaluated as often."""
    return Prometheus(workdir, [f"127.0.0.1:{collector.telemetry_port}"], job_name="otelcol", rule_files=[RULES])


def value(result: list[dict[str, Any]]) -> float:
    """The value of a one-series query result."""
    assert len(result) == 1, result
    return float(result[0]["value"][1])


def test_a_receiver_outage_grows_the_queue_and_starts_the_alert_until_the_receiver_is_back(
    mlflow_server: MlflowServer, collector_binary: Path, tmp_path: Path, experiment: str
) -> None:
    receiver = ReceiverProcess(mlflow_server.uri, tmp_path / "receiver.log")  # not started: a closed port
    collector = Collector(
        collector_binary, tmp_path / "storage", receiver_endpoint=receiver.endpoint, log_path=tmp_path / "collector.log"
    )
    reader = MlflowReader(mlflow_server.uri)
    try:
        with collector, telemetry_prometheus(collector, tmp_path / "prometheus") as prometheus:
            capacity = prometheus.wait_for('otelcol_exporter_queue_capacity{exporter="otlp_http"}')
            assert value(capacity) == 10000  # sending_queue.queue_size of otel-collector.yaml

            proc = instrumented(PACED, [str(STEPS), PAUSE], collector, experiment, tmp_path)
            first = value(prometheus.wait_for(f"{QUEUE} > 0", timeout=120))
            # The failure grows while the script keeps exporting: more batches wait, none leaves.
            prometheus.wait_for(f"{QUEUE} > {first}", timeout=120)
            assert prometheus.query(SENT) == []  # nothing ever delivered: the counter does not exist yet
            (pending,) = prometheus.wait_for(
                'ALERTS{alertname="TraceletDeliveryFailing", alertstate="pending"}', timeout=60
            )
            assert pending["metric"]["exporter"] == "otlp_http" and pending["metric"]["severity"] == "warning"
            wait_log(collector.log_path, "Exporting failed. Will retry the request after interval.")
            finished(proc)  # the whole run waits in the collector's queue
            assert reader.count(experiment) == 0

            receiver.start()
            reader.wait_count(experiment, 2 * STEPS, why=lambda: collector.logs() + receiver.logs())
            # Back: the queue empties, points are counted as sent, the alert is gone, nothing failed.
            (emptied,) = prometheus.wait_for(f"{QUEUE} == 0", timeout=120)
            assert value(prometheus.wait_for(f"{SENT} > 0", timeout=60)) > 0
            prometheus.wait_for(
                'ALERTS{alertname="TraceletDeliveryFailing"}', timeout=60, predicate=lambda result: result == []
            )
            assert prometheus.query(DROPPED) == []
            # It stays so: a later scrape finds the queue still empty, and no alert of the group starts.
            prometheus.wait_for(f"timestamp({QUEUE}) > {emptied['value'][0] + 1}", timeout=60)
            assert value(prometheus.query(QUEUE)) == 0
            assert prometheus.query('ALERTS{alertname=~"Tracelet.*"}') == []
    finally:
        receiver.stop()
    assert_paced_run(reader, experiment, STEPS)  # retried, never failed: every step once


def test_points_the_receiver_refuses_for_good_are_counted_and_fire_the_dropped_alert(
    mlflow_server: MlflowServer, collector_binary: Path, tmp_path: Path, experiment: str
) -> None:
    receiver = ReceiverProcess(mlflow_server.uri, tmp_path / "receiver.log", token="right").start()
    collector = Collector(
        collector_binary,
        tmp_path / "storage",
        receiver_endpoint=receiver.endpoint,
        receiver_token="wrong",  # 401: permanent, the collector drops the request
        log_path=tmp_path / "collector.log",
    )
    reader = MlflowReader(mlflow_server.uri)
    try:
        with collector, telemetry_prometheus(collector, tmp_path / "prometheus") as prometheus:
            finished(instrumented(PACED, ["50", "0.01"], collector, experiment, tmp_path))
            dropped = value(prometheus.wait_for(DROPPED, timeout=120))
            assert dropped > 0
            (firing,) = prometheus.wait_for('ALERTS{alertname="TraceletPointsDropped", alertstate="firing"}')
            assert firing["metric"]["exporter"] == "otlp_http" and firing["metric"]["severity"] == "critical"
            assert "Dropping data" in collector.logs()
            assert value(prometheus.query(SENT)) == 0  # counted with each failed request, at zero
    finally:
        receiver.stop()
    assert reader.count(experiment) == 0
