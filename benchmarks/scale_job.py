"""One synthetic training job for bench_scale.py: TAGS tags every step, RATE steps/s, only through SummaryWriter.

    scale_job.py --steps 600 --rate 20 --tags 5 --go GO_FILE --out result.json

``--rate 0`` logs as fast as it can (to build a backlog). Once instrumented, a job writes
``<out>.ready`` and waits until ``--go`` exists, so that N jobs started one after another (each
takes seconds of CPU to start) log at the same time. Run under ``opentelemetry-instrument``; the
script itself knows nothing of OpenTelemetry. It writes what it logged and the CPU seconds its
process tree (the training process and the export helper beside it) spent while logging, read
from /proc like bench_scale.py reads the other tiers.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from tensorboardX import SummaryWriter

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> tuple[int, float] | None:
    """(parent PID, CPU seconds incl. waited-for children) of ``pid`` from /proc/<pid>/stat, or None if gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()  # after "pid (comm) "; comm may contain spaces
    # fields[1] is ppid; utime, stime, cutime, cstime are fields 14-17 of the line, here 11-14.
    return int(fields[1]), sum(int(value) for value in fields[11:15]) / CLOCK_TICKS


def tree_cpu(root: int) -> float:
    """CPU seconds of ``root`` and every live descendant (each counting its exited, waited-for children).

    A process that exited and was waited for is in its parent's cutime/cstime, so summing every
    live process of the tree counts each CPU second once, also for short-lived children.
    """
    parents: dict[int, int] = {}
    cpu: dict[int, float] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            found = _stat(int(entry.name))
            if found is not None:
                parents[int(entry.name)], cpu[int(entry.name)] = found
    children: dict[int, list[int]] = {}
    for pid, parent in parents.items():
        children.setdefault(parent, []).append(pid)
    total, todo = 0.0, [root]
    while todo:
        pid = todo.pop()
        total += cpu.get(pid, 0.0)
        todo.extend(children.get(pid, ()))
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--rate", type=float, required=True, help="steps per second; 0: as fast as possible")
    parser.add_argument("--tags", type=int, default=5)
    parser.add_argument("--go", type=Path, required=True, help="start logging once this file exists")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    writer = SummaryWriter("runs/scale")
    tags = [f"tag{index}" for index in range(args.tags)]
    args.out.with_suffix(".ready").touch()
    while not args.go.exists():
        time.sleep(0.05)
    cpu_before = tree_cpu(os.getpid())
    first = time.time()
    begin = time.monotonic()
    for step in range(args.steps):
        if args.rate > 0:
            time.sleep(max(0.0, begin + step / args.rate - time.monotonic()))
        for index, tag in enumerate(tags):
            writer.add_scalar(tag, 1.0 / (step + 1) + index, step)
    last = time.time()
    writer.close()
    result = {
        "logged": args.steps * len(tags),
        "first": first,
        "last": last,
        "cpu_logging": tree_cpu(os.getpid()) - cpu_before,
        "cpu_before": cpu_before,  # interpreter, imports, instrumentation, helper start: once per job
    }
    args.out.write_text(json.dumps(result))


if __name__ == "__main__":
    main()
