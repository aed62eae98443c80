"""otel-collector.yaml against a real collector and a real Prometheus.

These tests build otelcol-tracelet from collector/ (cached outside the
repository) and check that the shipped configuration validates, that a broken
one does not, that a gauge posted over OTLP/HTTP becomes queryable with
PromQL, and that the persistent send queue delivers to the receiver after a
collector restart.
"""

from __future__ import annotations

import gzip
import http.server
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from support.collector import CONFIG_PATH, Collector, build_collector, clean_env, free_port
from support.prometheus import Prometheus


@pytest.fixture(scope="module")
def collector_binary() -> Path:
    return build_collector()


def validate(binary: Path, config: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(binary), "validate", "--config", str(config)],
        env=clean_env(env),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def gauge_request(name: str, value: float, tag: str, step: int, service: str = "tracelet-test") -> dict[str, Any]:
    """One OTLP/JSON ExportMetricsServiceRequest with a single gauge point and its step exemplar."""
    now = str(time.time_ns())
    return {
        "resourceMetrics": [
            {
                "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": service}}]},
                "scopeMetrics": [
                    {
                        "scope": {"name": "tracelet.test"},
                        "metrics": [
                            {
                                "name": name,
                                "gauge": {
                                    "dataPoints": [
                                        {
                                            "asDouble": value,
                                            "timeUnixNano": now,
                                            "attributes": [{"key": "tag", "value": {"stringValue": tag}}],
                                            "exemplars": [
                                                {
                                                    "asDouble": value,
                                                    "timeUnixNano": now,
                                                    "filteredAttributes": [
                                                        {"key": "step", "value": {"intValue": str(step)}}
                                                    ],
                                                }
                                            ],
                                        }
                                    ]
                                },
                            }
                        ],
                    }
                ],
            }
        ]
    }


def post_otlp_json(collector: Collector, body: dict[str, Any]) -> None:
    response = requests.post(collector.otlp_metrics_url, json=body, timeout=10)
    assert response.status_code == 200, response.text


@pytest.mark.parametrize(
    "env",
    [
        pytest.param({}, id="defaults"),
        pytest.param(
            {
                "TRACELET_OTLP_GRPC_ENDPOINT": "127.0.0.1:14317",
                "TRACELET_RECEIVER_ENDPOINT": "https://mlflow.example:4319",
                "TRACELET_RECEIVER_TOKEN": "secret",
                "TRACELET_COLLECTOR_MEMORY_LIMIT_MIB": "256",
            },
            id="overrides",
        ),
    ],
)
def test_shipped_config_validates(collector_binary: Path, env: dict[str, str]) -> None:
    result = validate(collector_binary, CONFIG_PATH, env)
    assert result.returncode == 0, result.stderr


def test_misspelled_key_fails_validation(collector_binary: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text(CONFIG_PATH.read_text().replace("send_timestamps:", "send_timestamp:"))
    result = validate(collector_binary, broken)
    assert result.returncode != 0
    assert "send_timestamp" in result.stderr


def test_bad_env_value_fails_validation(collector_binary: Path) -> None:
    # Shows the ${env:...} substitution is live: a non-number reaches limit_mib.
    result = validate(collector_binary, CONFIG_PATH, {"TRACELET_COLLECTOR_MEMORY_LIMIT_MIB": "lots"})
    assert result.returncode != 0
    assert "limit_mib" in result.stderr


def test_gauge_reaches_prometheus(collector_binary: Path, tmp_path: Path) -> None:
    name = f"tracelet_e2e_{uuid.uuid4().hex[:8]}"
    collector = Collector(
        collector_binary,
        tmp_path / "storage",
        # Nothing listens there: the otlp_http exporter just keeps the data queued.
        receiver_endpoint=f"http://127.0.0.1:{free_port()}",
        log_path=tmp_path / "collector.log",
    )
    with collector, Prometheus(tmp_path / "prometheus", [collector.prometheus_endpoint]) as prometheus:
        post_otlp_json(collector, gauge_request(name, 0.25, "train/loss", step=7))

        result = prometheus.wait_for(f'{name}{{tag="train/loss"}}', timeout=60)
        assert len(result) == 1, result
        assert float(result[0]["value"][1]) == 0.25
        # job comes from service.name; resource attributes do not become labels.
        assert result[0]["metric"]["job"] == "tracelet-test"
        assert prometheus.series_count(name) == 1


class _Receiver(http.server.ThreadingHTTPServer):
    """Stand-in for tracelet's OTLP receiver: records every POST /v1/metrics."""

    def __init__(self, port: int) -> None:
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.arrived = threading.Event()
        super().__init__(("127.0.0.1", port), _ReceiverHandler)


class _ReceiverHandler(http.server.BaseHTTPRequestHandler):
    server: _Receiver

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        if self.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        self.server.requests.append((dict(self.headers), body))
        self.server.arrived.set()
        self.send_response(200 if self.path == "/v1/metrics" else 404)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def receiver_port() -> int:
    return free_port()


@pytest.fixture
def start_receiver(receiver_port: int) -> Iterator[Any]:
    servers: list[_Receiver] = []

    def start() -> _Receiver:
        server = _Receiver(receiver_port)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def test_queue_survives_restart_until_receiver_is_up(
    collector_binary: Path, tmp_path: Path, receiver_port: int, start_receiver: Any
) -> None:
    name = f"tracelet_queued_{uuid.uuid4().hex[:8]}"
    collector = Collector(
        collector_binary,
        tmp_path / "storage",
        receiver_endpoint=f"http://127.0.0.1:{receiver_port}",
        receiver_token="t0ken",
        log_path=tmp_path / "collector.log",
    )
    with collector:
        # The receiver is down: the point goes to the persistent queue and is retried.
        post_otlp_json(collector, gauge_request(name, 1.5, "train/acc", step=42))
        deadline = time.monotonic() + 30
        while "Will retry" not in collector.logs():
            assert time.monotonic() < deadline, collector.logs()
            time.sleep(0.2)
        # Stopped mid-retry: the request in flight must stay in the on-disk queue.
        assert collector.stop() == 0, collector.logs()
        assert any(p.name.startswith("exporter_otlp_http") for p in (tmp_path / "storage").iterdir())

        receiver = start_receiver()
        collector.restart()
        assert receiver.arrived.wait(60), collector.logs()

    headers, body = receiver.requests[0]
    assert headers["Authorization"] == "Bearer t0ken"
    assert headers["Content-Type"] == "application/x-protobuf"
    # Protobuf keeps strings verbatim: the metric name, tag and exemplar's step key.
    assert name.encode() in body
    assert b"train/acc" in body
    assert b"step" in body


def test_telemetry_endpoint_serves_the_queue_metrics_the_alert_rules_read(
    collector_binary: Path, tmp_path: Path
) -> None:
    collector = Collector(
        collector_binary,
        tmp_path / "storage",
        receiver_endpoint=f"http://127.0.0.1:{free_port()}",
        log_path=tmp_path / "collector.log",
    )
    with collector:
        text = requests.get(collector.telemetry_url, timeout=10).text
    # prometheus/tracelet-alerts.yml (TraceletDeliveryFailing, TraceletDeliveryQueueFilling) reads these
    # names and labels; the send counters appear with the first request, as the route tests show.
    assert 'otelcol_exporter_queue_capacity{data_type="metrics",exporter="otlp_http"} 10000' in text
    assert 'otelcol_exporter_queue_size{data_type="metrics",exporter="otlp_http"} 0' in text
