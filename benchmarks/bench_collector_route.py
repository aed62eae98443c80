"""Points per second into MLflow: through the collector route vs the in-process exporter, side by side.

Both routes get the same N ``SummaryWriter.add_scalar`` calls (4 tags, N/4 steps each) in this
process, instrumented by ``TensorBoardInstrumentor`` with a 1 s export interval, against the same
``mlflow server``. The clock runs from the first call until every point is stored in MLflow:

- collector: OTLP/HTTP exporter -> otelcol-tracelet (otel-collector.yaml) -> ``tracelet receive``
  (its own process) -> MLflow; done when every point is stored (requests land in any order: the
  collector sends with several consumers). Run once with the shipped config's consumers and once
  with ``--consumers`` (default 1, the former setting), side by side;
- in process: ``MlflowMetricExporter``; done when ``force_flush`` returns (it waits for MLflow).

    python benchmarks/bench_collector_route.py [--points 100000] [--repeat 1] [--consumers 1] [--tracking-uri URI]

Without ``--tracking-uri`` a fresh ``mlflow server`` (sqlite, one worker) is started and stopped.
The collector and MLflow helpers are the test suite's (tests/support).
"""

from __future__ import annotations

import argparse
import logging
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import requests
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.sdk.metrics.export import MetricExporter, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from torch.utils.tensorboard import SummaryWriter

from opentelemetry.exporter.mlflow import MlflowMetricExporter
from opentelemetry.instrumentation.tensorboard import TensorBoardInstrumentor
from opentelemetry.instrumentation.tensorboard.configurator import meter_provider

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from support.collector import Collector, build_collector, free_port, stop_process
from support.mlflow_server import MlflowServer

TAGS = ("loss", "accuracy", "lr", "grad_norm")
WRITER = "bench"  # the log dir's name: MLflow keys are bench/loss, ...
KEYS = tuple(f"{WRITER}/{tag}" for tag in TAGS)
INTERVAL_MS = 1000


class Mlflow:
    """The three REST calls the benchmark needs."""

    def __init__(self, uri: str) -> None:
        self.api = uri.rstrip("/") + "/api/2.0/mlflow/"
        self.session = requests.Session()

    def run(self, experiment: str) -> dict | None:
        found = self.session.get(self.api + "experiments/get-by-name", params={"experiment_name": experiment})
        if found.status_code != 200:
            return None
        body = {"experiment_ids": [found.json()["experiment"]["experiment_id"]], "max_results": 2}
        runs = self.session.post(self.api + "runs/search", json=body).json().get("runs", [])
        return runs[0] if runs else None

    def latest_steps(self, experiment: str) -> dict[str, int]:
        run = self.run(experiment)
        return {m["key"]: int(m.get("step", 0)) for m in (run or {}).get("data", {}).get("metrics", [])}

    def count(self, experiment: str) -> int:
        run = self.run(experiment)
        if run is None:
            return 0
        total = 0
        for key in KEYS:
            token = None
            while True:
                params = {"run_id": run["info"]["run_id"], "metric_key": key, "max_results": 25000}
                if token:
                    params["page_token"] = token
                page = self.session.get(self.api + "metrics/get-history", params=params).json()
                total += len(page.get("metrics", []))
                token = page.get("next_page_token")
                if not token:
                    break
        return total


def log_points(provider: object, points: int, log_dir: Path) -> float:
    """N instrumented add_scalar calls; returns the seconds they took."""
    instrumentor = TensorBoardInstrumentor()
    instrumentor.instrument(meter_provider=provider)
    try:
        writer = SummaryWriter(str(log_dir), flush_secs=3600, max_queue=1000)
        start = time.perf_counter()
        for step in range(points // len(TAGS)):
            for i, tag in enumerate(TAGS):
                writer.add_scalar(tag, 1.0 / (step + i + 1), step)
        elapsed = time.perf_counter() - start
        writer.close()
    finally:
        instrumentor.uninstrument()
    return elapsed


def pipeline(exporter: MetricExporter, experiment: str, name: str) -> object:
    resource = Resource(
        {
            "service.name": name,
            "service.instance.id": uuid.uuid4().hex,
            "mlflow.experiment.name": experiment,
        }
    )
    reader = PeriodicExportingMetricReader(exporter, export_interval_millis=INTERVAL_MS)
    return meter_provider([reader], resource, shutdown_on_exit=False)


def in_process(uri: str, points: int, root: Path) -> tuple[float, float]:
    experiment = f"bench-in-process-{uuid.uuid4().hex[:6]}"
    root.mkdir(parents=True, exist_ok=True)
    exporter = MlflowMetricExporter(tracking_uri=uri, spool_dir=root / "spool", handle_process_exit=False)
    provider = pipeline(exporter, experiment, "bench-in-process")
    start = time.perf_counter()
    loop = log_points(provider, points, root / WRITER)
    if not provider.force_flush(600_000):
        raise SystemExit("in-process exporter did not deliver within 600 s")
    total = time.perf_counter() - start
    provider.shutdown()
    check(Mlflow(uri), experiment, points)
    return loop, total


def collector_route(uri: str, points: int, root: Path, consumers: int | None = None) -> tuple[float, float]:
    experiment = f"bench-collector-{uuid.uuid4().hex[:6]}"
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log = (root / "receiver.log").open("ab")
    receiver = subprocess.Popen(
        [sys.executable, "-m", "tracelet.cli", "receive", "--port", str(port), "--tracking-uri", uri],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    collector = Collector(
        build_collector(),
        root / "storage",
        receiver_endpoint=f"http://127.0.0.1:{port}",
        log_path=root / "collector.log",
        env={"TRACELET_COLLECTOR_CONSUMERS": str(consumers)} if consumers else None,
    )
    mlflow = Mlflow(uri)
    try:
        with collector:
            exporter = OTLPMetricExporter(endpoint=collector.otlp_metrics_url)
            provider = pipeline(exporter, experiment, "bench-collector")
            last = points // len(TAGS) - 1
            start = time.perf_counter()
            loop = log_points(provider, points, root / WRITER)
            provider.force_flush(60_000)
            deadline = time.monotonic() + 600
            while mlflow.latest_steps(experiment) != dict.fromkeys(KEYS, last) or mlflow.count(experiment) < points:
                if time.monotonic() > deadline:
                    raise SystemExit(f"collector route did not deliver within 600 s:\n{collector.logs()}")
                time.sleep(0.2)
            total = time.perf_counter() - start
            provider.shutdown()
            check(mlflow, experiment, points)
    finally:
        stop_process(receiver)
        log.close()
    return loop, total


def check(mlflow: Mlflow, experiment: str, points: int) -> None:
    stored = mlflow.count(experiment)
    if stored != points:
        raise SystemExit(f"{experiment}: {stored} of {points} points in MLflow")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--tracking-uri", default=None, help="an MLflow server to use instead of a fresh one")
    parser.add_argument("--consumers", type=int, default=1, help="the collector's sending consumers to compare with")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    with tempfile.TemporaryDirectory(prefix="bench-collector-route-") as tmp:
        root = Path(tmp)
        server = None if args.tracking_uri else MlflowServer(root / "mlflow").start()
        uri = args.tracking_uri or server.uri  # type: ignore[union-attr]
        fewer = f"collector, {args.consumers} consumer(s)"
        results: dict[str, list[tuple[float, float]]] = {"collector": [], fewer: [], "in process": []}
        routes = {
            "collector": collector_route,
            fewer: lambda *a: collector_route(*a, consumers=args.consumers),
            "in process": in_process,
        }
        try:
            for rep in range(args.repeat):
                order = list(routes.items())
                for name, route in order if rep % 2 == 0 else order[::-1]:
                    slug = name.replace(" ", "-").replace(",", "").replace("(", "").replace(")", "")
                    results[name].append(route(uri, args.points, root / f"{slug}-{rep}"))
        finally:
            if server is not None:
                server.stop()

    print(f"{args.points} add_scalar points into MLflow ({uri if args.tracking_uri else 'fresh mlflow server'}),")
    print(f"{args.repeat} repetition(s), best of each; clock: first call -> every point stored")
    rates = {}
    for name, runs in results.items():
        loop, total = min(runs, key=lambda r: r[1])
        rates[name] = args.points / total
        print(f"  {name:<26} {rates[name]:9.0f} points/s   ({total:6.1f} s in all, {loop:5.1f} s of it logging)")
    print(f"  ratio collector / in process: {rates['collector'] / rates['in process']:.2f}x")
    print(f"  ratio collector (shipped config) / {fewer}: {rates['collector'] / rates[fewer]:.2f}x")


if __name__ == "__main__":
    main()
