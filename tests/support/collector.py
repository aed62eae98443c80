"""Run the real OpenTelemetry Collector (otelcol-tracelet) from tests.

Tests exercise the shipped ``otel-collector.yaml`` with a real collector
process so that configuration mistakes and pipeline behaviour (queueing,
retries, Prometheus exposition) show up as they would for users. Every port
is a free loopback port, so tests can run side by side.
"""

from __future__ import annotations

import contextlib
import functools
import os
import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path

import requests

from .process import Service, free_port, free_ports, stop_process, tail

__all__ = ["Collector", "build_collector", "clean_env", "free_port", "free_ports", "stop_process", "tail"]

REPO_ROOT = Path(__file__).resolve().parents[2]
CONFIG_PATH = REPO_ROOT / "otel-collector.yaml"
BUILD_SCRIPT = REPO_ROOT / "scripts" / "build-collector.sh"

# Environment variables read by otel-collector.yaml; cleared before each start
# so that nothing from the calling shell leaks into a test collector.
CONFIG_ENV_VARS = (
    "TRACELET_OTLP_GRPC_ENDPOINT",
    "TRACELET_OTLP_HTTP_ENDPOINT",
    "TRACELET_PROMETHEUS_ENDPOINT",
    "TRACELET_RECEIVER_ENDPOINT",
    "TRACELET_RECEIVER_TOKEN",
    "TRACELET_COLLECTOR_STORAGE",
    "TRACELET_HEALTH_ENDPOINT",
    "TRACELET_COLLECTOR_MEMORY_LIMIT_MIB",
    "TRACELET_COLLECTOR_TELEMETRY_HOST",
    "TRACELET_COLLECTOR_TELEMETRY_PORT",
)


@functools.cache
def build_collector() -> Path:
    """Build (or reuse the cached) otelcol-tracelet binary and return its path.

    Cached per process: the script itself is cheap when the binary exists, but
    there is no need to run it more than once per test session.
    """
    result = subprocess.run(
        ["bash", str(BUILD_SCRIPT)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"build-collector.sh failed ({result.returncode}):\n{result.stderr[-4000:]}")
    lines = result.stdout.strip().splitlines()
    if not lines:
        raise RuntimeError(f"build-collector.sh printed no path:\n{result.stderr[-4000:]}")
    binary = Path(lines[-1])
    if not binary.is_file():
        raise RuntimeError(f"build-collector.sh printed {binary}, which does not exist")
    return binary


def clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Return os.environ without the collector's config variables, plus ``extra``.

    A validate or start must not depend on what the developer's shell exports.
    """
    env = {k: v for k, v in os.environ.items() if k not in CONFIG_ENV_VARS}
    if extra:
        env.update(extra)
    return env


class Collector(Service):
    """One otelcol-tracelet process running ``otel-collector.yaml`` on free loopback ports.

    The ports and the storage directory are fixed at construction, so
    :meth:`restart` brings back a collector with the same addresses and the
    same persistent send queue, which is what restart tests need.
    """

    def __init__(
        self,
        binary: Path,
        storage_dir: Path,
        *,
        config_path: Path = CONFIG_PATH,
        receiver_endpoint: str = "http://127.0.0.1:4319",
        receiver_token: str = "",
        env: Mapping[str, str] | None = None,
        log_path: Path | None = None,
    ) -> None:
        self.binary = Path(binary)
        self.config_path = Path(config_path)
        self.storage_dir = Path(storage_dir)
        self.receiver_endpoint = receiver_endpoint
        self.receiver_token = receiver_token
        self.extra_env = dict(env or {})
        if log_path is None:
            fd, name = tempfile.mkstemp(prefix="otelcol-tracelet-", suffix=".log")
            os.close(fd)
            log_path = Path(name)
        self.log_path = Path(log_path)

        grpc, http, prom, health, telemetry = free_ports(5)
        self.otlp_grpc_endpoint = f"127.0.0.1:{grpc}"
        self.otlp_http_endpoint = f"127.0.0.1:{http}"
        self.prometheus_endpoint = f"127.0.0.1:{prom}"
        self.health_endpoint = f"127.0.0.1:{health}"
        self.telemetry_port = telemetry
        self.proc: subprocess.Popen[bytes] | None = None

    # Addresses, as clients want them.
    @property
    def otlp_http_url(self) -> str:
        """Base URL for OTLP/HTTP clients (they append /v1/metrics)."""
        return f"http://{self.otlp_http_endpoint}"

    @property
    def otlp_metrics_url(self) -> str:
        """Full OTLP/HTTP metrics URL, for posting requests directly."""
        return f"{self.otlp_http_url}/v1/metrics"

    @property
    def prometheus_url(self) -> str:
        """The prometheus exporter's scrape URL."""
        return f"http://{self.prometheus_endpoint}/metrics"

    @property
    def health_url(self) -> str:
        """health_check extension: 200 once the pipelines are up."""
        return f"http://{self.health_endpoint}/"

    @property
    def telemetry_url(self) -> str:
        """The collector's own metrics (queue size, send failures)."""
        return f"http://127.0.0.1:{self.telemetry_port}/metrics"

    @property
    def env(self) -> dict[str, str]:
        """The environment the collector process gets."""
        return clean_env(
            {
                "TRACELET_OTLP_GRPC_ENDPOINT": self.otlp_grpc_endpoint,
                "TRACELET_OTLP_HTTP_ENDPOINT": self.otlp_http_endpoint,
                "TRACELET_PROMETHEUS_ENDPOINT": self.prometheus_endpoint,
                "TRACELET_RECEIVER_ENDPOINT": self.receiver_endpoint,
                "TRACELET_RECEIVER_TOKEN": self.receiver_token,
                "TRACELET_COLLECTOR_STORAGE": str(self.storage_dir),
                "TRACELET_HEALTH_ENDPOINT": self.health_endpoint,
                "TRACELET_COLLECTOR_TELEMETRY_HOST": "127.0.0.1",
                "TRACELET_COLLECTOR_TELEMETRY_PORT": str(self.telemetry_port),
                **self.extra_env,
            }
        )

    @property
    def pid(self) -> int | None:
        """PID of the running process, if any."""
        return self.proc.pid if self.proc is not None else None

    def running(self) -> bool:
        """True while the process is alive."""
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> Collector:
        """Start the process (without waiting for readiness); returns self."""
        if self.running():
            raise RuntimeError("collector already running")
        self.storage_dir.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [str(self.binary), "--config", str(self.config_path)],
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        return self

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Block until health_check answers 200; fail fast if the process died."""

        def ready() -> bool:
            with contextlib.suppress(requests.RequestException):
                return requests.get(self.health_url, timeout=1).status_code == 200
            return False

        self._wait_until("collector", ready, timeout)

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM this collector's PID, wait, SIGKILL if needed. Returns the exit code."""
        if self.proc is None:
            return None
        return stop_process(self.proc, timeout)

    def restart(self, timeout: float = 30.0) -> None:
        """Stop and start again with the same ports and storage, then wait until ready."""
        self.stop()
        self.start()
        self.wait_ready(timeout)

    def logs(self) -> str:
        """Tail of the collector's combined stdout/stderr."""
        return tail(self.log_path)
