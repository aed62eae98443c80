"""What capture and delivery cost a training loop, per route, side by side: the number a user feels.

A training-like loop (a small MLP step, one torch thread, then ``K`` ``SummaryWriter.add_scalar``
calls per step) runs in its own process, once per mode, in alternating order:

- ``none``: the model step only; ``plain``: plus TensorBoard; then, instrumented, one per route:
- ``sqlite``: ``OTEL_METRICS_EXPORTER=mlflow opentelemetry-instrument`` into an embedded ``sqlite:///`` store;
- ``server``: the same, into a real ``mlflow server`` (started here, one worker);
- ``start_logging``: ``tracelet.start_logging(backend="mlflow")`` in the script, same server;
- ``collector``: ``opentelemetry-instrument`` exporting OTLP to the real collector (``otel-collector.yaml``),
  which forwards to ``tracelet receive`` and the same server;
- ``otlp``: the same export to an OTLP endpoint that discards what it gets (tracelet's part of the
  collector route, without the collector, receiver and server working on the same machine).

A route runs with its default export interval (5 s); ``route@S`` sets it to ``S`` seconds
(``--routes server,server@0.5`` compares the two in one run). Each run warms up, then times
``--seconds`` of steps (default 32 s: at least six exports at a 5 s interval fall inside),
then gets SIGTERM while still training; a round is ``none, plain, route,
plain, route, plain, ...``. Then ``--launches`` short runs per mode (SIGTERM right after the first
step; ``plain`` with a SIGTERM handler that exits the orderly way, as tracelet's does). Printed per
route:

- ``share``: tracelet's extra time per step as a share of TensorBoard's own cost per step,
  ``(instrumented - plain) / (plain - none)``, each run against the plain runs next to it (the
  machine's speed drifts by more than the effect): the goal is at most 0.10;
- ``start-up``: process start to first step, instrumented minus plain (short runs);
- ``RSS``: the training process's peak RSS, instrumented minus plain (helper processes listed apart);
- ``SIGTERM``: signal to process exit, after the timed part and right after the first step;
- ``export``: CPU time per second of the training process's metric-reader and exporter threads
  (collections, packing, the hand-off to the helper), the part of the cost that the export
  interval sets; ``loop CPU``: the training thread's own CPU time per step, instrumented minus
  plain (capture itself); ``helpers`` and ``servers``: CPU ms per second of the helper processes and
  of the servers started here, which on a two-core machine take CPU from the loop. What ``share``
  holds beyond ``loop CPU`` and ``export`` is the loop waiting: for the GIL, or for a core.

A route whose training process runs neither a metric reader nor a helper stops the benchmark:
tracelet is not installed in the environment it runs in.

The servers (MLflow, the collector, the receiver) run at the lowest CPU priority: on a two-core
machine they stand in for infrastructure that lives elsewhere, and must not take the training core.

    python benchmarks/bench_training_loop.py [--seconds 32] [--rounds 2] [--scalars 8] [--routes sqlite,server@5,...]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from support.collector import Collector, build_collector, free_port, stop_process
from support.mlflow_server import MlflowServer

ROUTES = ("sqlite", "server", "start_logging", "collector", "otlp")
PYTHON = sys.executable
INSTRUMENT = str(Path(sys.executable).with_name("opentelemetry-instrument"))

LOOP = textwrap.dedent(
    """
    import json, os, resource, sys, time
    mode, seconds, scalars, warm_up = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
    if sys.argv[5] == "orderly":  # what an orderly exit (SystemExit and atexit) costs without tracelet
        import signal
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if mode == "start_logging":
        import tracelet
        tracelet.start_logging(exp_name="bench", project="bench-start_logging", backend="mlflow")
    import torch
    from torch.utils.tensorboard import SummaryWriter

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 10))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    inputs, targets = torch.randn(32, 64), torch.randint(0, 10, (32,))
    writer = None if mode == "none" else SummaryWriter("runs/train")
    tags = [f"metric_{i}" for i in range(scalars)]

    def step(n):
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(inputs), targets)
        loss.backward()
        optimizer.step()
        if writer is not None:
            value = loss.item()
            for tag in tags:
                writer.add_scalar(tag, value, n)

    def children():
        found = []
        for task in os.listdir("/proc/self/task"):
            with open(f"/proc/self/task/{task}/children") as f:
                found += [int(pid) for pid in f.read().split()]
        return found

    def peak_kb(pid="self"):
        try:
            with open(f"/proc/{pid}/status") as f:
                return next(int(line.split()[1]) for line in f if line.startswith("VmHWM"))
        except (OSError, StopIteration):
            return 0

    def export_cpu():
        # CPU seconds of the training process's threads that are not the training loop and not
        # TensorBoard's writer: the metric readers' collections and hand-offs (what an export
        # interval costs this process), and any exporter running here.
        import threading
        names = {t.native_id: t.name for t in threading.enumerate()}
        total, found = 0.0, False
        for task in os.listdir("/proc/self/task"):
            name = names.get(int(task), "")
            if "Reader" not in name and "Export" not in name:
                continue
            found = True
            with open(f"/proc/self/task/{task}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        return total, found

    def cpu_of(pid):
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def helpers_cpu():
        total = 0.0
        for pid in children():
            try:
                total += cpu_of(pid)
            except OSError:
                pass
        return total

    n = 0
    step(n)
    print(json.dumps({"event": "first_step", "t": time.time()}), flush=True)
    warm = time.perf_counter() + warm_up
    while time.perf_counter() < warm:
        n += 1
        step(n)
    start, first, export_before = time.perf_counter(), n, export_cpu()[0]
    main_before, helpers_before = time.thread_time(), helpers_cpu()
    print(json.dumps({"event": "timing"}), flush=True)
    end = start + seconds
    while time.perf_counter() < end:
        n += 1
        step(n)
    elapsed = max(time.perf_counter() - start, 1e-9)
    export_after, exporting = export_cpu()
    main_cpu, helpers_after = time.thread_time() - main_before, helpers_cpu()
    kids = children()
    print(json.dumps({
        "event": "timed", "us_per_step": elapsed / max(n - first, 1) * 1e6, "steps": n - first,
        "rss_kb": peak_kb(), "children": kids, "children_rss_kb": sum(peak_kb(pid) for pid in kids),
        "export_ms_per_s": (export_after - export_before) / elapsed * 1000, "exporting": exporting,
        "main_cpu_us_per_step": main_cpu / max(n - first, 1) * 1e6,
        "helpers_ms_per_s": (helpers_after - helpers_before) / elapsed * 1000,
    }), flush=True)
    deadline = time.perf_counter() + 300
    while time.perf_counter() < deadline:  # until SIGTERM
        n += 1
        step(n)
    """
)


@dataclass
class Result:
    us_per_step: float
    startup: float
    rss_mb: float
    children_rss_mb: float
    sigterm: float
    drain: float
    export_ms_per_s: float
    main_cpu_us_per_step: float
    helpers_ms_per_s: float
    servers_ms_per_s: float


@dataclass
class Bench:
    root: Path
    seconds: float
    scalars: int
    server: MlflowServer | None = None
    collector: Collector | None = None
    sink: str | None = None
    receiver: subprocess.Popen | None = None
    results: dict[str, list[Result]] = field(default_factory=dict)
    launches: dict[str, list[Result]] = field(default_factory=dict)
    order: list[tuple[str, Result]] = field(default_factory=list)  # the timed runs as they ran
    runs: int = 0

    def env(self, spec: str) -> tuple[list[str], dict[str, str]]:
        mode, _, interval = spec.partition("@")
        env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "TRACELET_", "MLFLOW_"))}
        env.update(OMP_NUM_THREADS="1")
        if interval:  # else each route's default
            env["OTEL_METRIC_EXPORT_INTERVAL"] = str(round(float(interval) * 1000))
            env["TRACELET_EXPORT_INTERVAL"] = interval
        env["TRACELET_SPOOL_DIR"] = str(self.root / f"spool-{self.runs}")
        env["MLFLOW_EXPERIMENT_NAME"] = f"bench-{mode}"
        command = [PYTHON]
        if mode == "sqlite":
            env.update(OTEL_METRICS_EXPORTER="mlflow", MLFLOW_TRACKING_URI=f"sqlite:///{self.root / 'store.db'}")
            command = [INSTRUMENT, PYTHON]
        elif mode in ("server", "start_logging"):
            env["MLFLOW_TRACKING_URI"] = self.server.uri  # type: ignore[union-attr]
            if mode == "server":
                env["OTEL_METRICS_EXPORTER"] = "mlflow"
                command = [INSTRUMENT, PYTHON]
        elif mode in ("collector", "otlp"):
            endpoint = self.collector.otlp_http_url if mode == "collector" else self.sink  # type: ignore[union-attr]
            env["OTEL_EXPORTER_OTLP_ENDPOINT"] = str(endpoint)
            command = [INSTRUMENT, PYTHON]
        return command, env

    def servers_cpu(self) -> float:
        """CPU seconds used so far by the servers this benchmark started (MLflow, collector, receiver)."""
        pids = [p.pid for p in (getattr(self.server, "proc", None), self.receiver) if p is not None]
        if self.collector is not None and getattr(self.collector, "proc", None) is not None:
            pids.append(self.collector.proc.pid)
        return sum(tree_cpu(pid) for pid in pids)

    def run(self, mode: str, quick: bool = False) -> Result:
        """One process: the timed loop then SIGTERM; ``quick``: SIGTERM right after the first step."""
        self.runs += 1
        workdir = self.root / f"run-{self.runs}-{mode}"
        workdir.mkdir()
        (workdir / "loop.py").write_text(LOOP)
        command, env = self.env(mode)
        mode, spec = mode.partition("@")[0], mode
        log = (workdir / "stderr.log").open("wb")
        launched = time.time()
        process = subprocess.Popen(
            [
                *command,
                "loop.py",
                mode,
                "0" if quick else str(self.seconds),
                str(self.scalars),
                "0" if quick else "2",
                "orderly" if quick and mode == "plain" else "-",
            ],
            cwd=workdir,
            env=env,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
        )
        events = {}
        assert process.stdout is not None
        servers, servers_from, timing_from = 0.0, 0.0, 0.0
        for line in process.stdout:
            event = json.loads(line)
            events[event["event"]] = event
            if event["event"] == "timing":
                servers_from, timing_from = self.servers_cpu(), time.perf_counter()
            if event["event"] == "timed":
                if timing_from:
                    servers = (self.servers_cpu() - servers_from) / (time.perf_counter() - timing_from) * 1000
                break
        if "timed" not in events:
            process.wait()
            raise SystemExit(f"{mode}: the loop ended early:\n{(workdir / 'stderr.log').read_text()[-3000:]}")
        if mode not in ("none", "plain") and not (events["timed"]["exporting"] or events["timed"]["children"]):
            process.kill()
            raise SystemExit(
                f"{mode}: the training process runs no metric reader and no helper: tracelet is not "
                "installed in this environment (run scripts/setup.sh)"
            )
        sent = time.perf_counter()
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=600)
        sigterm = time.perf_counter() - sent
        log.close()
        drain = wait_gone(events["timed"]["children"])
        timed = events["timed"]
        result = Result(
            timed["us_per_step"],
            events["first_step"]["t"] - launched,
            timed["rss_kb"] / 1024,
            timed["children_rss_kb"] / 1024,
            sigterm,
            drain,
            timed["export_ms_per_s"],
            timed["main_cpu_us_per_step"],
            timed["helpers_ms_per_s"],
            servers,
        )
        (self.launches if quick else self.results).setdefault(spec, []).append(result)
        if quick:
            return result
        self.order.append((spec, result))
        print(
            f"  {spec:<14} {result.us_per_step:8.1f} us/step  start-up {result.startup:5.2f} s  "
            f"RSS {result.rss_mb:6.0f} MB (+{result.children_rss_mb:.0f} MB in helpers)  "
            f"SIGTERM {result.sigterm:5.2f} s  helpers done {drain:5.1f} s later  "
            f"export threads {result.export_ms_per_s:5.1f} ms/s  training thread CPU "
            f"{result.main_cpu_us_per_step:6.1f} us/step  helpers {result.helpers_ms_per_s:5.1f} ms/s  "
            f"servers {result.servers_ms_per_s:5.1f} ms/s",
            flush=True,
        )
        return result


def discarding_sink() -> str:
    """An OTLP/HTTP endpoint on 127.0.0.1 that answers 200 and forgets the body; its base URL."""

    class Discard(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *_: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Discard)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_address[1]}"


def tree_cpu(pid: int) -> float:
    """CPU seconds of process ``pid`` and all its descendants (``/proc``)."""
    total, todo = 0.0, [pid]
    while todo:
        current = todo.pop()
        try:
            with open(f"/proc/{current}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
            for task in os.listdir(f"/proc/{current}/task"):
                with open(f"/proc/{current}/task/{task}/children") as f:
                    todo += [int(child) for child in f.read().split()]
        except OSError:
            continue
    return total


def wait_gone(pids: list[int], limit: float = 300.0) -> float:
    """Seconds until the loop's helper processes (if any) have exited."""
    start = time.perf_counter()
    while any(Path(f"/proc/{pid}").exists() and _alive(pid) for pid in pids):
        if time.perf_counter() - start > limit:
            break
        time.sleep(0.05)
    return time.perf_counter() - start


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def median(results: list[Result], name: str) -> float:
    return statistics.median(getattr(r, name) for r in results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=32.0, help="timed part of each run")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--scalars", type=int, default=8, help="add_scalar calls per step (K)")
    parser.add_argument("--routes", default=",".join(ROUTES))
    parser.add_argument("--launches", type=int, default=5, help="short runs per mode for start-up and exit times")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stopped: the servers started here stop too
    routes = [r.strip() for r in args.routes.split(",") if r.strip()]
    unknown = {r.partition("@")[0] for r in routes} - set(ROUTES)
    if unknown:
        raise SystemExit(f"unknown routes {sorted(unknown)}; choose from {', '.join(ROUTES)}")

    with tempfile.TemporaryDirectory(prefix="bench-training-loop-") as tmp:
        bench = Bench(Path(tmp), args.seconds, args.scalars)
        modes = {r.partition("@")[0] for r in routes}
        if {"server", "start_logging", "collector"} & modes:
            bench.server = MlflowServer(bench.root / "mlflow")
            with niced():
                bench.server.start()
        if "sqlite" in modes:  # MLflow creates its tables on first use: not part of any run
            from mlflow.tracking import MlflowClient  # noqa: PLC0415

            MlflowClient(f"sqlite:///{bench.root / 'store.db'}").search_experiments()
        if "otlp" in modes:
            bench.sink = discarding_sink()
        if "collector" in modes:
            port = free_port()
            with niced():
                bench.receiver = subprocess.Popen(
                    [PYTHON, "-m", "tracelet.cli", "receive", "--port", str(port), "--tracking-uri", bench.server.uri],
                    stdout=subprocess.DEVNULL,
                    stderr=(bench.root / "receiver.log").open("wb"),
                )
                bench.collector = Collector(
                    build_collector(),
                    bench.root / "storage",
                    receiver_endpoint=f"http://127.0.0.1:{port}",
                    log_path=bench.root / "collector.log",
                ).start()
            bench.collector.wait_ready()
        try:
            print(f"training loop: MLP step + {args.scalars} add_scalar per step, {args.seconds:g} s timed per run")
            for round_ in range(args.rounds):
                print(f"round {round_ + 1}/{args.rounds}")
                bench.run("none")
                bench.run("plain")
                for route in routes if round_ % 2 == 0 else routes[::-1]:
                    bench.run(route)
                    bench.run("plain")
            print(f"start-up and exit: {args.launches} short runs per mode")
            for _ in range(args.launches):
                for mode in ["plain", *routes]:
                    bench.run(mode, quick=True)
        finally:
            if bench.collector is not None:
                bench.collector.stop()
            if bench.receiver is not None:
                stop_process(bench.receiver)
            if bench.server is not None:
                bench.server.stop()
        report(bench, routes)


@contextlib.contextmanager
def niced() -> Iterator[None]:
    """Processes started inside run at the lowest CPU priority (they inherit it); as root, this one gets its back."""
    before = os.getpriority(os.PRIO_PROCESS, 0)
    os.setpriority(os.PRIO_PROCESS, 0, 19)
    try:
        yield
    finally:
        with contextlib.suppress(PermissionError):
            os.setpriority(os.PRIO_PROCESS, 0, before)


def shares(bench: Bench, route: str) -> list[float]:
    """Per run of ``route``: (it - its neighbouring plain runs) / (those plain runs - no logging).

    The machine's speed drifts by more than the effect measured; each run is compared with the
    TensorBoard-only runs just before and after it, and the no-logging run of its round.
    """
    found = []
    none = None
    for index, (mode, result) in enumerate(bench.order):
        if mode == "none":
            none = result.us_per_step
        if mode != route or none is None:
            continue
        neighbours = [
            bench.order[i][1].us_per_step
            for i in (index - 1, index + 1)
            if 0 <= i < len(bench.order) and bench.order[i][0] == "plain"
        ]
        plain = statistics.mean(neighbours)
        found.append((result.us_per_step - plain) / (plain - none))
    return found


def report(bench: Bench, routes: list[str]) -> None:
    results, launches = bench.results, bench.launches
    if not results:  # --rounds 0: start-up and exit only
        quick = launches["plain"]
        print(f"TensorBoard alone: start-up {median(quick, 'startup'):.2f} s, exit {median(quick, 'sigterm'):.2f} s")
        for route in routes:
            runs = launches[route]
            print(
                f"{route:<14} start-up {median(runs, 'startup') - median(quick, 'startup'):+.2f} s, "
                f"SIGTERM {median(runs, 'sigterm'):.2f} s"
            )
        return
    none, plain = median(results["none"], "us_per_step"), median(results["plain"], "us_per_step")
    print()
    print(f"no logging {none:.1f} us/step; TensorBoard alone {plain:.1f} us/step (its own cost {plain - none:.1f} us)")
    quick = launches.get("plain", [])
    if quick:
        print(
            f"TensorBoard alone: start-up {median(quick, 'startup'):.2f} s; an orderly exit on SIGTERM "
            f"(SystemExit, atexit) {median(quick, 'sigterm'):.2f} s"
        )
    print(
        f"{'route':<14} {'us/step':>8} {'share':>6} {'(runs)':>14} {'start-up':>9} {'RSS':>7} {'helpers':>8} "
        f"{'SIGTERM':>8} {'SIGTERM@0':>9} {'export':>7} {'loop CPU':>9} {'helpers':>8} {'servers':>8}"
    )
    base = results["plain"]
    for route in routes:
        runs = results[route]
        each = shares(bench, route)
        startup = (median(launches[route], "startup") - median(quick, "startup")) if quick else float("nan")
        early = median(launches[route], "sigterm") if quick else float("nan")
        print(
            f"{route:<14} {median(runs, 'us_per_step'):8.1f} {statistics.median(each):6.2f} "
            f"{' '.join(f'{x:.2f}' for x in each):>14} {startup:+8.2f}s "
            f"{median(runs, 'rss_mb') - median(base, 'rss_mb'):+5.0f}MB "
            f"{median(runs, 'children_rss_mb'):6.0f}MB "
            f"{median(runs, 'sigterm'):7.2f}s {early:8.2f}s {median(runs, 'export_ms_per_s'):5.1f}ms "
            f"{median(runs, 'main_cpu_us_per_step') - median(base, 'main_cpu_us_per_step'):+7.1f}us "
            f"{median(runs, 'helpers_ms_per_s'):6.0f}ms {median(runs, 'servers_ms_per_s'):6.0f}ms"
        )
    print("share: tracelet's extra time per step / TensorBoard's own cost per step, against the neighbouring")
    print("TensorBoard-only runs (goal <= 0.10); start-up: to the first step, instrumented - plain;")
    print("SIGTERM: after the timed part; SIGTERM@0: right after the first step; export: CPU ms per second")
    print("of the training process's reader and exporter threads (collections and hand-offs); loop CPU: the")
    print("training thread's own CPU per step, instrumented - plain; helpers, servers: their CPU ms per second.")
    print("Medians.")


if __name__ == "__main__":
    main()
