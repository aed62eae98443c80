"""Run a real Prometheus server from tests.

The end-to-end claim is that what tracelet captures can be queried with
PromQL, so tests scrape the collector with the Prometheus binary users run
(Debian's package), on a free loopback port with a throw-away TSDB.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import requests

from .collector import REPO_ROOT
from .process import Service, free_port, stop_process, tail

INSTALL_SCRIPT = REPO_ROOT / "scripts" / "install-prometheus.sh"
DEFAULT_BINARY = Path("/usr/bin/prometheus")


def prometheus_binary(install: bool = True) -> Path:
    """Path of the prometheus binary; runs scripts/install-prometheus.sh if it is missing.

    The install script is idempotent and keeps the package's own service from
    running, so calling this from tests is safe.
    """
    if DEFAULT_BINARY.is_file():
        return DEFAULT_BINARY
    found = shutil.which("prometheus")
    if found:
        return Path(found)
    if not install:
        raise FileNotFoundError("prometheus not installed (scripts/install-prometheus.sh installs it)")
    result = subprocess.run(
        ["bash", str(INSTALL_SCRIPT)],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"install-prometheus.sh failed ({result.returncode}):\n{result.stderr[-4000:]}")
    return Path(result.stdout.strip().splitlines()[-1])


class PrometheusError(RuntimeError):
    """The Prometheus HTTP API answered with an error."""


class Prometheus(Service):
    """One Prometheus process scraping the given targets every ``scrape_interval``.

    ``honor_labels`` keeps the ``job``/``instance`` labels that the collector's
    prometheus exporter derives from ``service.name``/``service.instance.id``
    instead of renaming them to ``exported_job``/``exported_instance``.
    """

    def __init__(
        self,
        workdir: Path,
        targets: Sequence[str],
        *,
        binary: Path | None = None,
        scrape_interval: str = "1s",
        honor_labels: bool = True,
        job_name: str = "otel-collector",
        extra_args: Sequence[str] = (),
        rule_files: Sequence[Path] = (),
    ) -> None:
        self.binary = Path(binary) if binary is not None else prometheus_binary()
        self.workdir = Path(workdir)
        self.targets = list(targets)
        self.scrape_interval = scrape_interval
        self.honor_labels = honor_labels
        self.job_name = job_name
        self.extra_args = list(extra_args)
        self.rule_files = [Path(path).resolve() for path in rule_files]  # evaluated every scrape_interval
        self.port = free_port()
        self.listen_address = f"127.0.0.1:{self.port}"
        self.url = f"http://{self.listen_address}"
        self.config_path = self.workdir / "prometheus.yml"
        self.data_dir = self.workdir / "data"
        self.log_path = self.workdir / "prometheus.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def write_config(self) -> Path:
        """Write prometheus.yml (JSON is valid YAML, so no YAML library is needed)."""
        config = {
            "global": {"scrape_interval": self.scrape_interval, "evaluation_interval": self.scrape_interval},
            "scrape_configs": [
                {
                    "job_name": self.job_name,
                    "honor_labels": self.honor_labels,
                    "scrape_interval": self.scrape_interval,
                    "scrape_timeout": self.scrape_interval,
                    "static_configs": [{"targets": self.targets}],
                }
            ],
        }
        if self.rule_files:
            config["rule_files"] = [str(path) for path in self.rule_files]
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(json.dumps(config, indent=2) + "\n")
        return self.config_path

    @property
    def pid(self) -> int | None:
        """PID of the running process, if any."""
        return self.proc.pid if self.proc is not None else None

    def start(self) -> Prometheus:
        """Write the config and start the server (without waiting); returns self."""
        if self.proc is not None and self.proc.poll() is None:
            raise RuntimeError("prometheus already running")
        self.write_config()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        args = [
            str(self.binary),
            f"--config.file={self.config_path}",
            f"--storage.tsdb.path={self.data_dir}",
            f"--web.listen-address={self.listen_address}",
            # Exemplars (training steps) are only kept with this feature on.
            "--enable-feature=exemplar-storage",
            *self.extra_args,
        ]
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                args,
                cwd=self.workdir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        return self

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Block until /-/ready answers 200; fail fast if the process died."""

        def ready() -> bool:
            with contextlib.suppress(requests.RequestException):
                return requests.get(f"{self.url}/-/ready", timeout=1).status_code == 200
            return False

        self._wait_until("prometheus", ready, timeout)

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM this server's PID, wait, SIGKILL if needed. Returns the exit code."""
        if self.proc is None:
            return None
        return stop_process(self.proc, timeout)

    def logs(self) -> str:
        """Tail of the server's log."""
        return tail(self.log_path)

    def _api(self, path: str, params: dict[str, Any]) -> Any:
        response = requests.get(f"{self.url}/api/v1/{path}", params=params, timeout=10)
        try:
            body = response.json()
        except ValueError as exc:
            raise PrometheusError(f"{path}: HTTP {response.status_code}: {response.text[:500]}") from exc
        if body.get("status") != "success":
            raise PrometheusError(f"{path}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def last_evaluations(self) -> list[float]:
        """When each rule group was last evaluated (unix seconds; 0 before its first evaluation)."""
        stamps = []
        for group in self._api("rules", {})["groups"]:
            # RFC 3339 with nanoseconds; Python's parser takes microseconds.
            text = re.sub(r"(\.\d{6})\d*", r"\1", group["lastEvaluation"]).replace("Z", "+00:00")
            stamps.append(max(datetime.fromisoformat(text).timestamp(), 0.0))
        return stamps

    def query(self, promql: str) -> list[dict[str, Any]]:
        """Instant query; returns the ``result`` list (each item has ``metric`` and ``value``)."""
        data = self._api("query", {"query": promql})
        if data.get("resultType") not in ("vector", "matrix"):
            raise PrometheusError(f"query {promql!r} returned a {data.get('resultType')}, not a vector")
        return data["result"]

    def alerts(self) -> list[dict[str, Any]]:
        """Every pending and firing alert, each with its ``labels``, ``annotations``, ``state`` and ``value``."""
        return self._api("alerts", {})["alerts"]

    def series(self, match: str) -> list[dict[str, str]]:
        """Label sets of all series matching the selector ``match``."""
        return self._api("series", {"match[]": match})

    def series_count(self, match: str) -> int:
        """Number of series matching ``match``: the cardinality a dashboard pays for."""
        return len(self.series(match))

    def query_exemplars(self, promql: str, start: float, end: float) -> list[dict[str, Any]]:
        """Exemplars of the matching series between ``start`` and ``end`` (unix seconds)."""
        return self._api("query_exemplars", {"query": promql, "start": start, "end": end})

    def wait_for(
        self,
        promql: str,
        timeout: float = 60.0,
        predicate: Callable[[list[dict[str, Any]]], bool] = bool,
    ) -> list[dict[str, Any]]:
        """Poll ``promql`` until ``predicate(result)`` holds (default: non-empty); return the result.

        Scrapes are asynchronous, so tests poll with a bound instead of sleeping.
        """
        deadline = time.monotonic() + timeout
        result: list[dict[str, Any]] = []
        while True:
            result = self.query(promql)
            if predicate(result):
                return result
            if time.monotonic() > deadline:
                raise TimeoutError(f"{promql!r} gave {result!r} after {timeout}s")
            time.sleep(0.5)
