"""How fast points reach one local ``mlflow server``: the REST ceiling, the exporter, ``mlflow.log_metric``.

All measured side by side in one run against one ``mlflow server --workers 1`` (sqlite store):

(a)  raw ``runs/log-batch`` REST calls, 1,000 metrics per request, each key's rows together as the
     exporter sends them: the ceiling (also shown once with keys interleaved step by step);
(b)  the exporter delivering 100,000 points, from ``export()`` to every point acknowledged;
(b') the same from the first instrumented ``SummaryWriter.add_scalar`` call to every point
     acknowledged (capture and delivery overlap; includes TensorBoard's own cost);
(c)  ``mlflow.log_metric`` one point at a time.

Usage: ``python benchmarks/bench_mlflow_export.py [--points 100000] [--rounds 4] [--log-metric-calls 2000]``
"""

from __future__ import annotations

import argparse
import json
import math
import signal
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import mlflow
import requests
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from torch.utils.tensorboard import SummaryWriter

from opentelemetry.exporter.mlflow import MlflowMetricExporter
from opentelemetry.instrumentation.tensorboard import TensorBoardInstrumentor
from opentelemetry.instrumentation.tensorboard.configurator import meter_provider

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from support.mlflow_server import MlflowServer  # noqa: E402

T0 = 1_700_000_000


def value(step: int, index: int) -> float:
    return math.nan if step % 1000 == 999 else step * 0.25 + index


def create_run(api: str, session: requests.Session, name: str) -> str:
    body = {"experiment_id": "0", "run_name": name, "start_time": int(time.time() * 1000)}
    return session.post(api + "runs/create", json=body, timeout=30).json()["run"]["info"]["run_id"]


def raw_rest(uri: str, points: int, tags: int = 10, by_key: bool = True) -> float:
    """(a): points/s of plain log-batch requests with 1,000 metrics each, one keep-alive session.

    ``by_key``: the rows of one key together, as the exporter sends them (a collection holds each
    series' points together), which MLflow's store takes faster than steps interleaving keys.
    """
    api = uri + "/api/2.0/mlflow/"
    session = requests.Session()
    run_id = create_run(api, session, "raw-rest")
    rows = [(f"tag{i % tags}", value(i // tags, i % tags), (T0 + i // tags) * 1000, i // tags) for i in range(points)]
    if by_key:
        rows.sort(key=lambda row: (row[0], row[3]))
    started = time.perf_counter()
    for begin in range(0, points, 1000):
        metrics = [
            {"key": k, "value": v if math.isfinite(v) else "NaN", "timestamp": t, "step": s}
            for k, v, t, s in rows[begin : begin + 1000]
        ]
        response = session.post(
            api + "runs/log-batch",
            data=json.dumps({"run_id": run_id, "metrics": metrics}),
            headers={"Content-Type": "application/json"},
            timeout=60,
        )
        response.raise_for_status()
    return points / (time.perf_counter() - started)


def _resource(name: str) -> Resource:
    """A new run each time: the SDK gives every provider of a process the same service.instance.id,
    and points re-sent into the same run would measure MLflow's (slow) duplicate check instead."""
    return Resource.create({"service.name": name, "service.instance.id": str(uuid.uuid4())})


def _log(writers: list, points: int, tags: int) -> None:
    for step in range(points // (tags * len(writers))):
        for writer in writers:
            for index in range(tags):
                writer.add_scalar(f"tag{index}", value(step, index), step, walltime=T0 + step)


def exporter_export(uri: str, points: int, spool: Path, tags: int = 10) -> tuple[float, int]:
    """(b): points/s from ``export()`` of one collection to all acknowledged."""
    reader = InMemoryMetricReader()
    provider = meter_provider([reader], resource=_resource("bench-export"))
    instrumentor = TensorBoardInstrumentor()
    instrumentor.instrument(meter_provider=provider)
    with tempfile.TemporaryDirectory() as logs:
        writer = SummaryWriter(str(Path(logs) / "version_0"))  # a generated name: keys stay tag0..tag9
        _log([writer], points, tags)
        writer.close()
        data = reader.get_metrics_data()
    instrumentor.uninstrument()
    exporter = MlflowMetricExporter(uri, spool_dir=spool, export_timeout=600, handle_process_exit=False)
    started = time.perf_counter()
    exporter.export(data)
    assert exporter.force_flush(timeout_millis=600_000), "not all points acknowledged"
    elapsed = time.perf_counter() - started
    exporter.shutdown()
    provider.shutdown()
    return exporter.delivered_points / elapsed, exporter.delivered_points


def exporter_instrumented(uri: str, points: int, spool: Path, tags: int = 10) -> tuple[float, float, int]:
    """(b'): points/s from the first add_scalar to all acknowledged, and the logging time alone."""
    exporter = MlflowMetricExporter(uri, spool_dir=spool, export_timeout=600, handle_process_exit=False)
    reader = PeriodicExportingMetricReader(exporter, export_interval_millis=1000)
    provider = meter_provider([reader], resource=_resource("bench-instrumented"))
    instrumentor = TensorBoardInstrumentor()
    instrumentor.instrument(meter_provider=provider)
    with tempfile.TemporaryDirectory() as logs:
        writer = SummaryWriter(str(Path(logs) / "version_0"))  # a generated name: keys stay tag0..tag9
        started = time.perf_counter()
        _log([writer], points, tags)
        logged = time.perf_counter() - started
        provider.shutdown()  # waits until every point is acknowledged (or spools; checked below)
        elapsed = time.perf_counter() - started
        writer.close()
    instrumentor.uninstrument()
    return exporter.delivered_points / elapsed, logged, exporter.delivered_points


def log_metric(uri: str, calls: int) -> float:
    """(c): points/s of ``mlflow.log_metric`` one point at a time."""
    mlflow.set_tracking_uri(uri)
    with mlflow.start_run(run_name="log-metric"):
        started = time.perf_counter()
        for step in range(calls):
            mlflow.log_metric("tag0", value(step, 0), step=step)
        elapsed = time.perf_counter() - started
    return calls / elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--points", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=4, help="rounds of (a) and (b), in alternating order")
    parser.add_argument("--log-metric-calls", type=int, default=2_000)
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so that the server below is stopped
    ok = True
    with tempfile.TemporaryDirectory() as root:
        server = MlflowServer(Path(root) / "server").start()
        try:
            spool = Path(root) / "spool"
            ceilings, exports, ratios = [], [], []
            # The machine is shared: alternate (a) and (b) and compare each (b) with the (a) beside it.
            # The store grows as it goes, so the order alternates (a, b), (b, a), ...
            for number in range(1, args.rounds + 1):
                if number % 2:
                    a = raw_rest(server.uri, args.points)
                    b, delivered = exporter_export(server.uri, args.points, spool)
                else:
                    b, delivered = exporter_export(server.uri, args.points, spool)
                    a = raw_rest(server.uri, args.points)
                ok &= delivered == args.points
                ceilings.append(a)
                exports.append(b)
                ratios.append(b / a)
                print(
                    f"round {number}: (a) raw REST log-batch, 1,000/request {a:8,.0f} points/s | "
                    f"(b) exporter export() -> acknowledged {b:8,.0f} points/s ({delivered:,} points) | "
                    f"(b)/(a) {b / a:.3f}",
                    flush=True,
                )
            interleaved = raw_rest(server.uri, args.points, by_key=False)
            b2, logged, delivered2 = exporter_instrumented(server.uri, args.points, spool)
            ok &= delivered2 == args.points
            c = log_metric(server.uri, args.log_metric_calls)
            a = statistics.median(ceilings)
            print()
            print(f"(a)  raw REST log-batch, 1,000 per request  {a:10,.0f} points/s (median of {args.rounds})")
            print(f"     the same, each request interleaving keys {interleaved:10,.0f} points/s")
            print(f"(b)  exporter, export() -> acknowledged      {statistics.median(exports):10,.0f} points/s")
            print(
                f"(b') add_scalar -> acknowledged              {b2:10,.0f} points/s "
                f"(the {args.points:,} add_scalar calls alone took {logged:.1f} s)"
            )
            print(f"(c)  mlflow.log_metric, one at a time        {c:10,.0f} points/s ({args.log_metric_calls:,} calls)")
            print(f"(b)/(a)  = {statistics.median(ratios):.3f} (median of per-round ratios; goal >= 0.9)")
            print(f"(b')/(a) = {b2 / a:.3f}")
            print(f"(c)/(a)  = {c / a:.4f}")
            leftovers = list(spool.glob("*.jsonl"))
            if ok and not leftovers:
                print("every point acknowledged, nothing spooled")
            else:
                print("WARNING: not every point was acknowledged")
                return 1
        finally:
            server.stop()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
