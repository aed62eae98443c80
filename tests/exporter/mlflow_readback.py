"""Reading MLflow back over its REST API, and the pieces the exporter tests share."""

from __future__ import annotations

import math
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from torch.utils.tensorboard import SummaryWriter

from opentelemetry.instrumentation.tensorboard import TensorBoardInstrumentor
from opentelemetry.instrumentation.tensorboard.configurator import meter_provider

MAX_DOUBLE = 1.7976931348623157e308
T0 = 1_700_000_000  # whole seconds: wall times whose milliseconds are exact


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def stored(value: float) -> float:
    """What MLflow keeps of ``value``: NaN stays NaN, infinities become the largest double."""
    if math.isinf(value):
        return MAX_DOUBLE if value > 0 else -MAX_DOUBLE
    return value


def same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == b


class Mlflow:
    """The few REST calls the assertions need."""

    def __init__(self, uri: str) -> None:
        self.api = uri.rstrip("/") + "/api/2.0/mlflow/"
        self.session = requests.Session()

    def _get(self, endpoint: str, **params: Any) -> dict:
        response = self.session.get(self.api + endpoint, params=params, timeout=30)
        response.raise_for_status()
        return response.json()

    def _post(self, endpoint: str, body: dict) -> dict:
        response = self.session.post(self.api + endpoint, json=body, timeout=30)
        response.raise_for_status()
        return response.json()

    def runs(self, experiment_name: str) -> list[dict]:
        response = self.session.get(
            self.api + "experiments/get-by-name", params={"experiment_name": experiment_name}, timeout=30
        )
        if response.status_code == 404:
            return []
        response.raise_for_status()
        experiment_id = response.json()["experiment"]["experiment_id"]
        return self._post("runs/search", {"experiment_ids": [experiment_id], "max_results": 1000}).get("runs", [])

    def run(self, run_id: str) -> dict:
        return self._get("runs/get", run_id=run_id)["run"]

    def only_run(self, experiment_name: str) -> dict:
        runs = self.runs(experiment_name)
        assert len(runs) == 1, f"expected one run in {experiment_name}, found {len(runs)}"
        return runs[0]

    def keys(self, run: dict) -> set[str]:
        return {m["key"] for m in run["data"].get("metrics", [])}

    def history(self, run_id: str, key: str, page: int = 4000) -> list[tuple[int, float, int]]:
        """Every stored ``(step, value, timestamp)`` of ``key``, read page by page."""
        rows: list[tuple[int, float, int]] = []
        token = None
        while True:
            params: dict[str, Any] = {"run_id": run_id, "metric_key": key, "max_results": page}
            if token:
                params["page_token"] = token
            answer = self._get("metrics/get-history", **params)
            for metric in answer.get("metrics", []):
                rows.append((int(metric.get("step", 0)), float(metric["value"]), int(metric["timestamp"])))
            token = answer.get("next_page_token")
            if not token:
                return sorted(rows, key=lambda r: (r[0], r[2]))

    def params(self, run: dict) -> dict[str, str]:
        return {p["key"]: p["value"] for p in run["data"].get("params", [])}

    def tags(self, run: dict) -> dict[str, str]:
        return {t["key"]: t["value"] for t in run["data"].get("tags", [])}


def assert_exactly(mlflow: Mlflow, run_id: str, expected: dict[str, list[tuple[int, float, int]]]) -> None:
    """Every expected ``(step, value, timestamp)`` is stored once, and nothing else."""
    run = mlflow.run(run_id)
    assert mlflow.keys(run) == set(expected)
    for key, rows in expected.items():
        got = mlflow.history(run_id, key)
        want = sorted(((s, stored(v), t) for s, v, t in rows), key=lambda r: (r[0], r[2]))
        assert len(got) == len(want), f"{key}: {len(got)} stored, {len(want)} logged"
        for (gs, gv, gt), (ws, wv, wt) in zip(got, want, strict=True):
            assert (gs, gt) == (ws, wt), f"{key}: stored step/time {(gs, gt)}, logged {(ws, wt)}"
            assert same(gv, wv), f"{key} step {gs}: stored {gv}, logged {wv}"


@contextmanager
def instrumented(provider: MeterProvider) -> Iterator[TensorBoardInstrumentor]:
    instrumentor = TensorBoardInstrumentor()
    instrumentor.instrument(meter_provider=provider)
    try:
        yield instrumentor
    finally:
        instrumentor.uninstrument()


def provider_for(exporter: Any, name: str, interval_ms: float = 500) -> MeterProvider:
    reader = PeriodicExportingMetricReader(exporter, export_interval_millis=interval_ms)
    return meter_provider([reader], resource=Resource.create({"service.name": name}))


@dataclass
class Trainer:
    """A training loop on its own thread: logs ``tags`` every ``pause`` seconds until stopped.

    Records what it logged (as MLflow keys under ``log_dir``'s last component) and how long each
    ``add_scalar`` call took, the bound the exporter must keep whatever MLflow does.
    """

    log_dir: Path
    tags: tuple[str, ...] = ("loss", "accuracy")
    pause: float = 0.005
    logged: dict[str, list[tuple[int, float, int]]] = field(default_factory=dict)
    longest_call: float = 0.0
    steps: int = 0

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def value(self, step: int, index: int) -> float:
        special = (math.nan, math.inf, -math.inf)
        return special[(step // 97) % 3] if step % 97 == 13 else step * 0.25 + index

    def _run(self) -> None:
        writer = SummaryWriter(str(self.log_dir))
        prefix = self.log_dir.name
        step = 0
        try:
            while not self._stop.is_set():
                for index, tag in enumerate(self.tags):
                    value = self.value(step, index)
                    started = time.perf_counter()
                    writer.add_scalar(tag, value, step, walltime=T0 + step)
                    self.longest_call = max(self.longest_call, time.perf_counter() - started)
                    self.logged.setdefault(f"{prefix}/{tag}", []).append((step, value, (T0 + step) * 1000))
                step += 1
                self.steps = step
                time.sleep(self.pause)
        finally:
            writer.close()

    def start(self) -> Trainer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=60)
        assert not self._thread.is_alive()

    def wait_steps(self, steps: int, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while self.steps < steps:
            assert time.monotonic() < deadline, f"training reached only {self.steps} steps"
            time.sleep(0.05)


def wait_for(condition: Any, timeout: float = 60, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)
