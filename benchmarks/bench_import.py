"""How fast ``tracelet import`` moves TensorBoard event files into one local ``mlflow server``, against its ceiling.

Side by side in one run, against one ``mlflow server --workers 1`` (sqlite store):

(a) raw ``runs/log-batch`` REST calls, 1,000 metrics per request, each key's rows together: the
    ceiling (the same measurement as ``bench_mlflow_export.py``);
(b) the import of a log dir holding the same number of points (10 tags), from the first event
    read to every point acknowledged, into a new run each round;
(c) the same import again: nothing to send, only what MLflow holds read and compared;
(d) the whole ``tracelet import`` command once, process start-up and ``import mlflow`` included.

Rounds alternate (a, b), (b, a), ... so that each ratio compares neighbours on a shared machine.

Usage: ``python benchmarks/bench_import.py [--points 100000] [--rounds 4]``
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tensorboardX import SummaryWriter

from tracelet.tensorboard_import import Importer, MlflowTarget, find_log_dirs

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_mlflow_export import T0, raw_rest, value  # noqa: E402
from support.mlflow_server import MlflowServer  # noqa: E402

TAGS = 10


def write_logs(directory: Path, points: int) -> Path:
    """A log dir of ``points`` scalars over ``TAGS`` tags, one step per second, a NaN every 1,000 steps."""
    logging.getLogger("tensorboardX").setLevel(logging.ERROR)  # one warning per NaN otherwise
    log_dir = directory / "version_0"
    writer = SummaryWriter(str(log_dir), flush_secs=3600)
    for step in range(points // TAGS):
        for index in range(TAGS):
            writer.add_scalar(f"tag{index}", value(step, index), step, walltime=T0 + step)
    writer.close()
    return directory


def import_once(uri: str, logs: Path, experiment: str) -> tuple[float, int, int]:
    """(b) or (c): points/s sent, points sent, points found already there."""
    target = MlflowTarget(uri, experiment)
    started = time.perf_counter()
    summary = Importer(target, experiment).run(find_log_dirs([logs]))
    elapsed = time.perf_counter() - started
    moved = summary.points_sent or summary.points_read  # (c) sends nothing: its rate is of points compared
    return moved / elapsed, summary.points_sent, summary.points_present


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--points", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=4, help="rounds of (a) and (b), in alternating order")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so that the server below is stopped
    ok = True
    with tempfile.TemporaryDirectory() as root:
        logs = write_logs(Path(root) / "logs", args.points)
        server = MlflowServer(Path(root) / "server").start()
        try:
            ceilings, imports, ratios = [], [], []
            for number in range(1, args.rounds + 1):
                experiment = f"bench-import-{number}"
                if number % 2:
                    a = raw_rest(server.uri, args.points)
                    b, sent, _ = import_once(server.uri, logs, experiment)
                else:
                    b, sent, _ = import_once(server.uri, logs, experiment)
                    a = raw_rest(server.uri, args.points)
                ok &= sent == args.points
                ceilings.append(a)
                imports.append(b)
                ratios.append(b / a)
                print(
                    f"round {number}: (a) raw REST log-batch, 1,000/request {a:8,.0f} points/s | "
                    f"(b) import, first event read -> acknowledged {b:8,.0f} points/s ({sent:,} points) | "
                    f"(b)/(a) {b / a:.3f}",
                    flush=True,
                )
            again, resent, present = import_once(server.uri, logs, "bench-import-1")
            ok &= resent == 0 and present == args.points
            env = {**os.environ, "MLFLOW_TRACKING_URI": server.uri}
            tracelet = str(Path(sys.executable).with_name("tracelet"))
            started = time.perf_counter()
            done = subprocess.run(
                [tracelet, "import", str(logs), "--experiment", "bench-import-cli"],
                env=env,
                capture_output=True,
                text=True,
                check=False,
            )
            command = time.perf_counter() - started
            ok &= done.returncode == 0
            print()
            print(f"(a) raw REST log-batch, 1,000 per request     {statistics.median(ceilings):10,.0f} points/s")
            print(f"(b) import, first event read -> acknowledged  {statistics.median(imports):10,.0f} points/s")
            print(
                f"(c) the same import again                     {again:10,.0f} points/s read and compared "
                f"({resent:,} sent, {present:,} already there)"
            )
            print(f"(d) the whole command, start-up included      {command:10.1f} s: {done.stdout.strip()}")
            print(f"(b)/(a) = {statistics.median(ratios):.3f} (median of per-round ratios; goal >= 0.8)")
            if not ok:
                print("WARNING: not every point was imported exactly once", done.stderr[-2000:])
                return 1
            print("every point imported once; the second import sent nothing")
        finally:
            server.stop()
    return 0 if ok and not math.isnan(statistics.median(ratios)) else 1


if __name__ == "__main__":
    sys.exit(main())
