"""Plain vs instrumented ``SummaryWriter.add_scalar``, side by side in one run.

Each repetition times N calls on a plain writer, then N calls on the same kind of writer with
``TensorBoardInstrumentor`` active, then the collection that turns the instrumented calls into
OpenTelemetry exemplars (the reader thread's share). Prints medians and ratios:

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

from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from opentelemetry.instrumentation.tensorboard import TensorBoardInstrumentor
from opentelemetry.instrumentation.tensorboard.configurator import meter_provider


def writer_class(kind: str) -> type:
    if kind == "tensorboardX":
        from tensorboardX import SummaryWriter  # noqa: PLC0415
    else:
        from torch.utils.tensorboard import SummaryWriter  # noqa: PLC0415
    return SummaryWriter


def timed_calls(writer: object, calls: int) -> float:
    add_scalar = writer.add_scalar  # type: ignore[attr-defined]
    gc.collect()
    start = time.perf_counter()
    for step in range(calls):
        add_scalar("train/loss", 1.0 / (step + 1), step)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--writer", choices=("torch", "tensorboardX"), default="torch")
    args = parser.parse_args()

    SummaryWriter = writer_class(args.writer)  # noqa: N806
    reader = InMemoryMetricReader()
    provider = meter_provider([reader])
    instrumentor = TensorBoardInstrumentor()
    plain, instrumented, collected = [], [], []
    with tempfile.TemporaryDirectory() as root:
        for rep in range(args.repeat):
            writer = SummaryWriter(f"{root}/plain{rep}", flush_secs=3600, max_queue=1000)
            plain.append(timed_calls(writer, args.calls))
            writer.close()

            instrumentor.instrument(meter_provider=provider, max_pending=args.calls + 1)
            writer = SummaryWriter(f"{root}/inst{rep}", flush_secs=3600, max_queue=1000)
            instrumented.append(timed_calls(writer, args.calls))
            start = time.perf_counter()
            data = reader.get_metrics_data()
            collected.append(time.perf_counter() - start)
            writer.close()
            instrumentor.uninstrument()
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

    per_call = [t / args.calls * 1e6 for t in plain]
    per_inst = [t / args.calls * 1e6 for t in instrumented]
    per_total = [(t + c) / args.calls * 1e6 for t, c in zip(instrumented, collected, strict=True)]
    p, i, total = statistics.median(per_call), statistics.median(per_inst), statistics.median(per_total)
    print(f"writer: {args.writer}, {args.calls} calls x {args.repeat} repetitions (medians)")
    print(f"plain add_scalar         {p:8.2f} us/call")
    print(f"instrumented add_scalar  {i:8.2f} us/call   ratio {i / p:.3f}x   (goal <= 1.10x)")
    print(f"  + collection           {total:8.2f} us/call   ratio {total / p:.3f}x   (reader thread's share included)")
    print("all points captured in every repetition")


if __name__ == "__main__":
    main()
