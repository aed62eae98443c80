"""What a SIGKILL of the whole job costs: training time whose points never reach MLflow, per route.

The out-of-memory killer or a lost node kills the training process and its helper together. A
training-like loop (8 ``add_scalar`` per step, about 1 ms per step) runs under each mode, is
killed with SIGKILL (both processes at once) at a random moment 3 to 6 s in, then ``tracelet
upload`` sends what the job left on disk into the same ``sqlite:///`` store, and ``tracelet import``
of its log dir adds the tail TensorBoard's event file kept. Per mode it prints the
steps the loop had logged (read from a counter it updates every step), the steps in MLflow
afterwards, the steps TensorBoard's own event file kept, and the training time lost (missing steps
times the loop's step time). Duplicates are counted too (there must be none).

Modes: ``zero-code`` (``OTEL_METRICS_EXPORTER=mlflow opentelemetry-instrument``) and
``start_logging`` (``tracelet.start_logging(backend="mlflow")``); ``mode@S`` sets the export
interval to ``S`` seconds (e.g. ``zero-code@0.5`` against the default 5 s).

    python benchmarks/bench_sigkill_loss.py [--kills 3] [--modes zero-code,zero-code@5,start_logging]
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import textwrap
import time
from collections import Counter
from pathlib import Path
from typing import Any

from mlflow.tracking import MlflowClient
from tbparse import SummaryReader

PYTHON = sys.executable
BIN = Path(sys.executable).parent
MODES = ("zero-code", "start_logging")

LOOP = textwrap.dedent(
    """
    import os, struct, sys, time
    if sys.argv[1] == "start_logging":
        import tracelet
        tracelet.start_logging(exp_name="victim", backend="mlflow")
    from torch.utils.tensorboard import SummaryWriter

    counter = os.open("steps", os.O_RDWR | os.O_CREAT)
    writer = SummaryWriter("runs/train")
    tags = [f"metric_{i}" for i in range(8)]
    began = time.perf_counter()
    step = 0
    while True:
        until = began + (step + 1) / 1000  # about 1 ms per step, like a small model's
        while time.perf_counter() < until:
            pass
        for tag in tags:
            writer.add_scalar(tag, step * 0.001, step)
        os.pwrite(counter, struct.pack("<qd", step, time.perf_counter() - began), 0)
        step += 1
    """
)


def children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(child) for child in (task / "children").read_text().split()]
    return found


def kill_once(root: Path, spec: str, index: int) -> dict[str, float]:
    mode, _, interval = spec.partition("@")
    workdir = root / f"{index}-{spec}"
    workdir.mkdir()
    (workdir / "loop.py").write_text(LOOP)
    store = f"sqlite:///{root / 'store.db'}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "TRACELET_", "MLFLOW_"))}
    env.update(
        OMP_NUM_THREADS="1",
        MLFLOW_TRACKING_URI=store,
        MLFLOW_EXPERIMENT_NAME=f"kill-{index}-{spec}",
        TRACELET_SPOOL_DIR=str(workdir / "spool"),
    )
    if interval:
        env.update(OTEL_METRIC_EXPORT_INTERVAL=str(round(float(interval) * 1000)), TRACELET_EXPORT_INTERVAL=interval)
    command = [PYTHON, "loop.py", mode]
    if mode == "zero-code":
        env["OTEL_METRICS_EXPORTER"] = "mlflow"
        command = [str(BIN / "opentelemetry-instrument"), *command]
    process = subprocess.Popen(command, cwd=workdir, env=env, stderr=(workdir / "stderr.log").open("wb"))
    counter = workdir / "steps"
    while not counter.exists() or counter.stat().st_size < 16:
        if process.poll() is not None:
            raise SystemExit(f"{spec}: the loop ended:\n{(workdir / 'stderr.log').read_text()[-3000:]}")
        time.sleep(0.05)
    time.sleep(random.uniform(3.0, 6.0))
    helpers = children(process.pid)
    os.kill(process.pid, signal.SIGKILL)
    for helper in helpers:
        os.kill(helper, signal.SIGKILL)
    process.wait()
    logged, seconds = struct.unpack("<qd", counter.read_bytes()[:16])
    logged += 1
    subprocess.run(
        [str(BIN / "tracelet"), "upload", "--spool-dir", str(workdir / "spool")],
        env=env,
        capture_output=True,
        check=True,
        timeout=300,
    )
    client = MlflowClient(store)

    def stored() -> tuple[Counter[int], list[Any]]:
        experiment = client.get_experiment_by_name(env["MLFLOW_EXPERIMENT_NAME"])
        runs = client.search_runs([experiment.experiment_id]) if experiment else []
        steps: Counter[int] = Counter()
        for run in runs:
            for metric in client.get_metric_history(run.info.run_id, "train/metric_0"):
                steps[metric.step] += 1
        return steps, runs

    steps, runs = stored()
    landed = len(steps)
    experiment_name = env["MLFLOW_EXPERIMENT_NAME"]
    # Then the tail TensorBoard's event file kept, into the same run: what a user does after a crash.
    subprocess.run(
        [str(BIN / "tracelet"), "import", str(workdir / "runs" / "train"), "--experiment", experiment_name],
        env=env,
        capture_output=True,
        timeout=300,
    )
    after, runs_after = stored()
    events = SummaryReader(str(workdir / "runs" / "train")).scalars
    tensorboard = int((events["tag"] == "metric_0").sum()) if len(events) else 0
    step_time = seconds / logged
    return {
        "logged": logged,
        "landed": landed,
        "duplicated": sum(n - 1 for n in steps.values()),
        "tensorboard": tensorboard,
        "lost_s": (logged - landed) * step_time,
        # The counter is written after each step's add_scalar calls: MLflow may hold one step more.
        "lost_after_import_s": max(logged - len(after), 0) * step_time,
        "duplicated_after_import": sum(n - 1 for n in after.values()),
        "runs_after_import": len(runs_after),
        "status": runs[0].info.status if runs else "none",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=3, help="killed runs per mode")
    parser.add_argument("--modes", default="zero-code,zero-code@0.5,start_logging,start_logging@0.5")
    args = parser.parse_args()
    specs = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = {s.partition("@")[0] for s in specs} - set(MODES)
    if unknown:
        raise SystemExit(f"unknown modes {sorted(unknown)}; choose from {', '.join(MODES)}")
    results: dict[str, list[dict[str, float]]] = {spec: [] for spec in specs}
    with tempfile.TemporaryDirectory(prefix="bench-sigkill-") as tmp:
        root = Path(tmp)
        MlflowClient(f"sqlite:///{root / 'store.db'}").search_experiments()  # creates the tables first
        index = 0
        for _ in range(args.kills):
            for spec in specs:
                index += 1
                result = kill_once(root, spec, index)
                results[spec].append(result)
                print(
                    f"  {spec:<18} logged {result['logged']:6.0f}  in MLflow {result['landed']:6.0f}  "
                    f"duplicated {result['duplicated']:.0f}  TensorBoard's file {result['tensorboard']:6.0f}  "
                    f"lost {result['lost_s']:.2f} s  run {result['status']}; after tracelet import: lost "
                    f"{result['lost_after_import_s']:.2f} s, duplicated {result['duplicated_after_import']:.0f}, "
                    f"{result['runs_after_import']:.0f} run(s)",
                    flush=True,
                )
    print()
    print(
        f"{'mode':<18} {'lost (median)':>14} {'lost (max)':>11} {'TensorBoard kept':>17} {'duplicated':>11} "
        f"{'lost after import (max)':>24}"
    )
    for spec, runs in results.items():
        lost = [r["lost_s"] for r in runs]
        kept = statistics.median(r["tensorboard"] / r["logged"] for r in runs)
        print(
            f"{spec:<18} {statistics.median(lost):12.2f} s {max(lost):9.2f} s {kept:16.0%} "
            f"{sum(r['duplicated'] for r in runs):11.0f} {max(r['lost_after_import_s'] for r in runs):22.2f} s"
        )
    print("lost: training time whose points are not in MLflow after `tracelet upload` (the tail at the kill);")
    print("TensorBoard kept: share of the logged steps its own event file held after the kill;")
    print("lost after import: the same after `tracelet import` of the run's log dir (the tail TensorBoard kept).")


if __name__ == "__main__":
    main()
