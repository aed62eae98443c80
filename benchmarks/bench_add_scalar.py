"""Plain vs instrumented ``SummaryWriter.add_scalar``, side by side in one run.

With ``TensorBoardInstrumentor`` active, each repetition makes N calls through the patched
``add_scalar`` of one writer and N through the original method (as TensorBoard defines it) of
another writer of the same kind, in short alternating blocks, then times the collection that
turns the instrumented calls into OpenTelemetry exemplars (the reader thread's share). Prints
medians and ratios:

- ``call``: what the training loop pays per call (the goal is at most 1.10x plain);
- ``call + collect``: the whole CPU cost, including the work a reader thread does later.

    python benchmarks/bench_add_scalar.py [--calls 100000] [--repeat 5] [--writer torch|tensorboardX]
"""

from __future__ import annotations

import argparse
import gc
import statistics
import tempfile
import time
import types
from collections.abc import Callable

from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from opentelemetry.instrumentation.tensorboard import TensorBoardInstrumentor
from opentelemetry.instrumentation.tensorboard.configurator import meter_provider


def writer_class(kind: str) -> type:
    if kind == "tensorboardX":
        from tensorboardX import SummaryWriter  # noqa: PLC0415
    else:
        from torch.utils.tensorboard import SummaryWriter  # noqa: PLC0415
    return SummaryWriter


def timed_calls(add_scalar: Callable[..., object], first: int, calls: int) -> float:
    start = time.perf_counter()
    for step in range(first, first + calls):
        add_scalar("train/loss", 1.0 / (step + 1), step)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=100_000, help="calls per writer and repetition")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--block", type=int, default=2_000, help="calls per alternating block")
    parser.add_argument("--writer", choices=("torch", "tensorboardX"), default="torch")
    args = parser.parse_args()

    SummaryWriter = writer_class(args.writer)  # noqa: N806
    reader = InMemoryMetricReader()
    provider = meter_provider([reader])
    instrumentor = TensorBoardInstrumentor()
    instrumentor.instrument(meter_provider=provider, max_pending=args.calls + 1)
    original = SummaryWriter.add_scalar.__wrapped__  # the method as TensorBoard defines it
    plain, instrumented, collected, pairs = [], [], [], []
    with tempfile.TemporaryDirectory() as root:
        for rep in range(args.repeat):
            # Short alternating blocks: both sides see the same machine load, so the ratio of each
            # pair is meaningful on a shared, noisy machine.
            plain_writer = SummaryWriter(f"{root}/plain{rep}", flush_secs=3600, max_queue=1000)
            inst_writer = SummaryWriter(f"{root}/inst{rep}", flush_secs=3600, max_queue=1000)
            plain_call = types.MethodType(original, plain_writer)
            inst_call = inst_writer.add_scalar
            plain_total = inst_total = 0.0
            gc.collect()
            for first in range(0, args.calls, args.block):
                count = min(args.block, args.calls - first)
                order = (False, True) if (first // args.block) % 2 else (True, False)
                times = {}
                for instrumented_side in order:
                    call = inst_call if instrumented_side else plain_call
                    times[instrumented_side] = timed_calls(call, first, count)
                plain_total += times[False]
                inst_total += times[True]
                pairs.append(times[True] / times[False])
            start = time.perf_counter()
            data = reader.get_metrics_data()
            collected.append(time.perf_counter() - start)
            plain.append(plain_total)
            instrumented.append(inst_total)
            plain_writer.close()
            inst_writer.close()
            points = sum(
                len(point.exemplars)
                for rm in data.resource_metrics
                for sm in rm.scope_metrics
                for metric in sm.metrics
                if metric.name == "tensorboard.scalar"
                for point in metric.data.data_points
            )
            if points != args.calls:
                raise SystemExit(f"lost points: {points} of {args.calls}")

    instrumentor.uninstrument()
    p = statistics.median(t / args.calls * 1e6 for t in plain)
    i = statistics.median(t / args.calls * 1e6 for t in instrumented)
    total = statistics.median((t + c) / args.calls * 1e6 for t, c in zip(instrumented, collected, strict=True))
    print(f"writer: {args.writer}, {args.calls} calls x {args.repeat} repetitions, blocks of {args.block}")
    print(f"plain add_scalar         {p:8.2f} us/call (median)")
    print(f"instrumented add_scalar  {i:8.2f} us/call (median)   ratio {i / p:.3f}x")
    print(f"paired blocks            median ratio {statistics.median(pairs):.3f}x   (goal <= 1.10x)")
    print(f"  + collection           {total:8.2f} us/call   ratio {total / p:.3f}x   (reader thread's share included)")
    print("all points captured in every repetition")


if __name__ == "__main__":
    main()
