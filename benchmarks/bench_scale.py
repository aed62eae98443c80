"""N concurrent training jobs through the real collector route, against the MLflow server's own ceiling.

Each job is its own process (``scale_job.py`` under ``opentelemetry-instrument``): 5 tags x 20
steps/s through ``SummaryWriter`` for ``--seconds``, OTLP/HTTP to the built collector running the
shipped ``otel-collector.yaml`` (its sending consumers), then ``tracelet receive`` (one process),
then ``mlflow server``. Run per store: sqlite (one MLflow worker: sqlite takes one writer) and
PostgreSQL (Debian's server, a throw-away cluster; ``--pg-workers`` MLflow workers).

Measured per store:

- ceiling: ``--clients`` (4) raw ``runs/log-batch`` clients in parallel, 1,000 metrics per request,
  each key's rows together (as the receiver writes them), bodies encoded before the clock starts;
  measured before and after the route runs (the store grows), the mean is the ceiling;
- paced runs, one per N: logged (what the jobs wrote), landed (distinct (run, key, step) rows in
  the store), duplicates (rows beyond one per (run, key, step)), drain (seconds from the last
  point any job logged until every point is in the store), points/s (landed / first point logged
  -> all landed: the offered rate when the route keeps up);
- backlog: ``--backlog-jobs`` jobs log as fast as they can while the receiver is down (the
  collector holds everything in its persistent queue), then the receiver starts; points/s is the
  landing rate between 10 % and 90 % of the points landed: the route's maximum, to compare with
  the ceiling;
- CPU seconds per landed point of each tier (collector, receiver, MLflow, PostgreSQL) from
  /proc/<pid>/stat of its process tree over each run, and of the jobs (their training process and
  export helper while logging, measured by each job; plus the one-off start cost per job).

The landed counts are read from the store directly (sqlite read-only, or PostgreSQL), not through
MLflow, so polling does not load the server being measured. The machine may be shared: numbers
are noisy, so both absolute rates and ratios are printed.

    python benchmarks/bench_scale.py [--jobs 8,32] [--seconds 20] [--backlog-jobs 4] [--stores sqlite,postgresql]

Each job process imports torch (tensorboardX does) and takes seconds of CPU to start (printed as
"job start"), so on a 2-core machine much of the run is spent starting 8 + 32 + 4 jobs per store;
``--seconds`` and ``--backlog-points`` set how much each job logs.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import signal
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg2
import requests
from scale_job import tree_cpu

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "tests" / "collector_route"))

from route_support import ReceiverProcess, instrumented  # noqa: E402
from support.collector import Collector, build_collector  # noqa: E402
from support.mlflow_server import MlflowServer  # noqa: E402
from support.postgres import Postgres  # noqa: E402

JOB = Path(__file__).with_name("scale_job.py")
T0_MS = 1_700_000_000_000
POLL = 0.25  # seconds between reads of the store's row count


# The store, read directly ---------------------------------------------------------------------


class Store:
    """Counts an experiment's metric rows in MLflow's tables (sqlite or PostgreSQL)."""

    _ROWS = (
        "FROM metrics m JOIN runs r ON m.run_uuid = r.run_uuid "
        "JOIN experiments e ON r.experiment_id = e.experiment_id WHERE e.name = {mark}"
    )

    def __init__(self, connect: Callable[[], object], mark: str) -> None:
        self._connect = connect
        self._mark = mark

    def _one(self, sql: str, experiment: str) -> int:
        connection = self._connect()
        try:
            cursor = connection.cursor()  # type: ignore[attr-defined]
            cursor.execute(sql.format(mark=self._mark), (experiment,))
            return int(cursor.fetchone()[0])
        finally:
            connection.close()  # type: ignore[attr-defined]

    def rows(self, experiment: str) -> int:
        """Every metric row of the experiment, duplicates included."""
        return self._one("SELECT count(*) " + self._ROWS, experiment)

    def distinct(self, experiment: str) -> int:
        """Distinct (run, key, step): the points that landed, each counted once."""
        return self._one(
            "SELECT count(*) FROM (SELECT DISTINCT m.run_uuid, m.key, m.step " + self._ROWS + ") d", experiment
        )


def sqlite_store(server: MlflowServer) -> Store:
    path = server.store_uri.removeprefix("sqlite:///")
    return Store(lambda: sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30), "?")


def postgres_store(postgres: Postgres) -> Store:
    return Store(lambda: psycopg2.connect(postgres.dsn), "%s")


@dataclasses.dataclass
class Backend:
    """One MLflow server with its store, and the processes whose CPU counts as a tier."""

    name: str
    server: MlflowServer
    store: Store
    postgres: Postgres | None

    def tiers(self) -> dict[str, int]:
        pids = {"MLflow": self.server.proc.pid}  # type: ignore[union-attr]
        if self.postgres is not None and self.postgres.pid is not None:
            pids["PostgreSQL"] = self.postgres.pid
        return pids


@contextlib.contextmanager
def backend(name: str, root: Path, pg_workers: int) -> Iterator[Backend]:
    root.mkdir(parents=True, exist_ok=True)
    if name == "sqlite":
        server = MlflowServer(root / "mlflow").start()
        try:
            yield Backend(f"sqlite, {server.workers} MLflow worker", server, sqlite_store(server), None)
        finally:
            server.stop()
        return
    with Postgres() as postgres:
        server = MlflowServer(root / "mlflow", backend_store_uri=postgres.uri, workers=pg_workers).start()
        try:
            yield Backend(f"PostgreSQL, {pg_workers} MLflow workers", server, postgres_store(postgres), postgres)
        finally:
            server.stop()


# CPU of each tier ---------------------------------------------------------------------------------


class Cpu:
    """CPU seconds of named process trees between :meth:`start` and :meth:`stop`."""

    def __init__(self) -> None:
        self.pids: dict[str, int] = {}
        self.before: dict[str, float] = {}
        self.spent: dict[str, float] = {}

    def start(self, **pids: int) -> None:
        for tier, pid in pids.items():
            self.pids[tier] = pid
            self.before[tier] = tree_cpu(pid)

    def stop(self) -> dict[str, float]:
        for tier, pid in self.pids.items():
            self.spent[tier] = tree_cpu(pid) - self.before[tier]
        return self.spent


# The ceiling: raw log-batch from several clients ------------------------------------------------


def ceiling(uri: str, clients: int, points: int, tags: int = 5) -> tuple[float, float, float]:
    """Points/s of ``clients`` parallel log-batch clients (1,000 metrics per request); also the
    MLflow (and PostgreSQL) CPU seconds per point during it, for the tier table."""
    api = uri.rstrip("/") + "/api/2.0/mlflow/"
    session = requests.Session()
    experiment = session.post(api + "experiments/create", json={"name": f"ceiling-{uuid.uuid4().hex[:8]}"}).json()
    bodies: list[list[bytes]] = []
    for client in range(clients):
        run = session.post(
            api + "runs/create",
            json={"experiment_id": experiment["experiment_id"], "run_name": f"raw-{client}", "start_time": T0_MS},
        ).json()["run"]["info"]["run_id"]
        steps = points // tags
        rows = [
            {"key": f"tag{t}", "value": 1.0 / (s + 1) + t, "timestamp": T0_MS + s * 50, "step": s}
            for t in range(tags)
            for s in range(steps)
        ]
        bodies.append(
            [json.dumps({"run_id": run, "metrics": rows[i : i + 1000]}).encode() for i in range(0, len(rows), 1000)]
        )
    errors: list[str] = []

    def send(requests_of_client: list[bytes]) -> None:
        with requests.Session() as own:
            for body in requests_of_client:
                answer = own.post(
                    api + "runs/log-batch", data=body, headers={"Content-Type": "application/json"}, timeout=120
                )
                if answer.status_code != 200:
                    errors.append(f"{answer.status_code} {answer.text[:200]}")

    threads = [threading.Thread(target=send, args=(b,)) for b in bodies]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    if errors:
        raise SystemExit(f"raw log-batch failed: {errors[:3]}")
    return clients * (points // tags) * tags / elapsed, elapsed, clients * (points // tags) * tags


# One run of the route -----------------------------------------------------------------------------


@dataclasses.dataclass
class Result:
    label: str
    jobs: int
    logged: int
    landed: int
    duplicates: int
    drain: float
    rate: float
    cpu: dict[str, float]  # tier -> CPU seconds in the run
    job_logging_cpu: float  # the jobs' trees while logging
    job_start_cpu: float  # per job, before its first point


def route(
    back: Backend,
    root: Path,
    jobs: int,
    steps: int,
    rate: float,
    tags: int,
    *,
    backlog: bool,
) -> Result:
    """N jobs through collector -> receiver -> MLflow; with ``backlog`` the receiver starts after they end."""
    root.mkdir(parents=True, exist_ok=True)
    experiment = f"scale-{jobs}-{'backlog' if backlog else 'paced'}-{uuid.uuid4().hex[:6]}"
    receiver = ReceiverProcess(back.server.uri, root / "receiver.log")
    collector = Collector(
        build_collector(), root / "storage", receiver_endpoint=receiver.endpoint, log_path=root / "collector.log"
    )
    cpu = Cpu()
    try:
        with collector:
            if not backlog:
                receiver.start()
                cpu.start(collector=collector.pid, receiver=receiver.proc.pid, **back.tiers())  # type: ignore[union-attr]
            go = root / "go"
            procs = []
            for number in range(jobs):
                cwd = root / f"job{number}"
                cwd.mkdir()
                args = ["--steps", str(steps), "--rate", str(rate), "--tags", str(tags)]
                args += ["--go", str(go), "--out", str(cwd / "result.json")]
                procs.append(
                    instrumented(
                        JOB, args, collector, experiment, cwd, OTEL_RESOURCE_ATTRIBUTES=f"mlflow.run.name=job-{number}"
                    )
                )
            ready = [root / f"job{n}" / "result.ready" for n in range(jobs)]
            deadline = time.monotonic() + 600
            while not all(path.exists() for path in ready):
                if time.monotonic() > deadline or any(proc.poll() is not None for proc in procs):
                    raise SystemExit(f"not every job got ready:\n{procs[0].communicate(timeout=60)[0][-4000:]}")
                time.sleep(0.1)
            go.touch()  # all of them log from now on, at once
            for proc in procs:
                output, _ = proc.communicate(timeout=1800)
                if proc.returncode != 0:
                    raise SystemExit(f"a job failed ({proc.returncode}):\n{output[-4000:]}")
            results = [json.loads((root / f"job{n}" / "result.json").read_text()) for n in range(jobs)]
            logged = sum(r["logged"] for r in results)
            first = min(r["first"] for r in results)
            last = max(r["last"] for r in results)
            if backlog:
                time.sleep(3)  # the collector's batch timeout (1 s): everything is queued
                cpu.start(collector=collector.pid, **back.tiers())
                drain_start = time.time()
                receiver.start()
                cpu.start(receiver=receiver.proc.pid)  # type: ignore[union-attr]
            marks: list[tuple[float, int]] = []
            deadline = time.monotonic() + 1200
            while True:
                count = back.store.rows(experiment)
                marks.append((time.time(), count))
                if count >= logged:
                    break
                if time.monotonic() > deadline:
                    raise SystemExit(f"{count} of {logged} landed after 1200 s:\n{collector.logs()}{receiver.logs()}")
                time.sleep(POLL)
            done = marks[-1][0]
            time.sleep(2)  # a late retry would show up as a duplicate
            spent = cpu.stop()
            landed = back.store.distinct(experiment)
            duplicates = back.store.rows(experiment) - landed
    finally:
        receiver.stop()
    if backlog:
        low = next(t for t, c in marks if c >= 0.1 * logged)
        high = next(t for t, c in marks if c >= 0.9 * logged)
        measured_rate = 0.8 * logged / max(high - low, POLL)
        drain = done - drain_start
    else:
        measured_rate = landed / (done - first)
        drain = max(0.0, done - last)
    return Result(
        label="backlog" if backlog else "paced",
        jobs=jobs,
        logged=logged,
        landed=landed,
        duplicates=duplicates,
        drain=drain,
        rate=measured_rate,
        cpu=spent,
        job_logging_cpu=sum(r["cpu_logging"] for r in results),
        job_start_cpu=statistics.mean(r["cpu_before"] for r in results),
    )


# Output ----------------------------------------------------------------------------------------


def print_store(name: str, ceilings: list[float], results: list[Result], ceiling_cpu: dict[str, float]) -> None:
    top = statistics.mean(ceilings)
    print(
        f"\n== {name}: ceiling {top:,.0f} points/s (4-client raw log-batch; "
        + " and ".join(f"{c:,.0f}" for c in ceilings)
        + " before and after the route runs)"
    )
    print(
        f"{'run':<8} {'N':>3} {'logged':>8} {'landed':>8} {'dup':>4} {'drain s':>8} {'points/s':>9} "
        f"{'ceiling':>9} {'ratio':>6}"
    )
    for r in results:
        print(
            f"{r.label:<8} {r.jobs:>3} {r.logged:>8,} {r.landed:>8,} {r.duplicates:>4} {r.drain:>8.1f} "
            f"{r.rate:>9,.0f} {top:>9,.0f} {r.rate / top:>6.2f}"
        )
    print("CPU per landed point (ms; /proc/<pid>/stat of each tier's process tree over the run):")
    tiers = ["job", "collector", "receiver", "MLflow", "PostgreSQL"]
    print(f"{'run':<8} {'N':>3} " + " ".join(f"{t:>10}" for t in tiers) + f" {'sum':>8}   (job start, s/job)")
    for r in results:
        per = {t: s / r.landed * 1000 for t, s in r.cpu.items()}
        per["job"] = r.job_logging_cpu / r.logged * 1000
        cells = " ".join(f"{per[t]:>10.4f}" if t in per else f"{'-':>10}" for t in tiers)
        print(f"{r.label:<8} {r.jobs:>3} {cells} {sum(per.values()):>8.4f}   ({r.job_start_cpu:.2f})")
    cells = " ".join(f"{ceiling_cpu[t] * 1000:>10.4f}" if t in ceiling_cpu else f"{'-':>10}" for t in tiers)
    print(f"{'raw':<8} {'':>3} {cells}   (the ceiling runs: MLflow's own cost without the route)")
    for r in results:
        if r.label == "backlog":
            busy = ", ".join(f"{t} {s / r.drain:.2f}" for t, s in r.cpu.items())
            print(f"busy cores while the backlog drained ({r.drain:.1f} s): {busy}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", default="8,32", help="comma-separated N of the paced runs")
    parser.add_argument("--seconds", type=float, default=20.0, help="how long each paced job logs")
    parser.add_argument("--rate", type=float, default=20.0, help="steps per second of a paced job")
    parser.add_argument("--tags", type=int, default=5)
    parser.add_argument("--backlog-jobs", type=int, default=4, help="0: no backlog run")
    parser.add_argument("--backlog-points", type=int, default=25_000, help="points per backlog job")
    parser.add_argument("--clients", type=int, default=4, help="parallel raw log-batch clients of the ceiling")
    parser.add_argument("--ceiling-points", type=int, default=25_000, help="points per ceiling client")
    parser.add_argument("--stores", default="sqlite,postgresql")
    parser.add_argument("--pg-workers", type=int, default=2, help="MLflow workers on PostgreSQL")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so that every server below is stopped
    build_collector()
    sizes = [int(n) for n in args.jobs.split(",") if n]
    steps = int(args.seconds * args.rate)
    print(
        f"jobs: {args.tags} tags x {args.rate:g} steps/s for {args.seconds:g} s each = "
        f"{args.tags * args.rate:g} points/s per job; backlog: {args.backlog_jobs} jobs x "
        f"{args.backlog_points:,} points as fast as they log, receiver started afterwards",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        for name in args.stores.split(","):
            with backend(name, Path(tmp) / name, args.pg_workers) as back:
                cpu = Cpu()
                cpu.start(**back.tiers())
                first, _, raw_points = ceiling(back.server.uri, args.clients, args.ceiling_points, args.tags)
                ceiling_cpu = {t: s / raw_points for t, s in cpu.stop().items()}
                print(f"{back.name}: ceiling {first:,.0f} points/s", flush=True)
                results = []
                for n in sizes:
                    results.append(
                        route(back, Path(tmp) / name / f"paced-{n}", n, steps, args.rate, args.tags, backlog=False)
                    )
                    r = results[-1]
                    print(f"  paced N={n}: {r.landed:,}/{r.logged:,} landed, drain {r.drain:.1f} s", flush=True)
                if args.backlog_jobs:
                    per_job_steps = args.backlog_points // args.tags
                    results.append(
                        route(
                            back,
                            Path(tmp) / name / "backlog",
                            args.backlog_jobs,
                            per_job_steps,
                            0,
                            args.tags,
                            backlog=True,
                        )
                    )
                    r = results[-1]
                    print(f"  backlog: {r.rate:,.0f} points/s", flush=True)
                second, _, _ = ceiling(back.server.uri, args.clients, args.ceiling_points, args.tags)
                print_store(back.name, [first, second], results, ceiling_cpu)
                sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
