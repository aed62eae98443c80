"""Capture under real conditions: Lightning, forked DataLoader workers, long runs, zero-code runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import tensorboardX
import torch
from opentelemetry.sdk.metrics.export import (
    InMemoryMetricReader,
    MetricExporter,
    MetricExportResult,
    PeriodicExportingMetricReader,
)
from points import collect, event_scalars, metric, points
from support.console import console_points
from support.env import subprocess_env
from support.otlp_sink import OtlpSink

from opentelemetry.instrumentation.tensorboard import TensorBoardInstrumentor, views
from opentelemetry.instrumentation.tensorboard.configurator import meter_provider

BIN = Path(sys.executable).parent


def test_lightning_trainer_fit(reader, tmp_path: Path) -> None:
    import pytorch_lightning as pl  # noqa: PLC0415
    from pytorch_lightning.loggers import TensorBoardLogger  # noqa: PLC0415

    class Tiny(pl.LightningModule):
        def __init__(self, lr: float = 0.05, hidden: int = 4) -> None:
            super().__init__()
            self.save_hyperparameters()
            self.layer = torch.nn.Linear(8, 2)

        def training_step(self, batch, _index):
            x, y = batch
            loss = torch.nn.functional.cross_entropy(self.layer(x), y)
            self.log("train_loss", loss)
            return loss

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)

    torch.manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(64, 8), torch.randint(0, 2, (64,)))
    logger = TensorBoardLogger(str(tmp_path), name="tiny")
    trainer = pl.Trainer(
        max_epochs=2,
        logger=logger,
        log_every_n_steps=1,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        devices=1,
    )
    trainer.fit(Tiny(), torch.utils.data.DataLoader(data, batch_size=8))

    data_out = reader.get_metrics_data()
    captured = sorted((p.tag, p.step if p.step is not None else 0, p.value) for p in points(data_out))
    written = sorted((tag, step, value) for tag, step, value, _ in event_scalars(logger.log_dir))
    assert [(t, s) for t, s, _ in captured] == [(t, s) for t, s, _ in written]
    assert all(c[2] == pytest.approx(w[2], rel=1e-6) for c, w in zip(captured, written, strict=True))
    assert len([c for c in captured if c[0] == "train_loss"]) == 16  # 8 batches x 2 epochs, every step
    params = {
        p.attributes["tensorboard.hparam.name"]: p.attributes["tensorboard.hparam.value"]
        for p in metric(data_out, "tensorboard.hparam")
    }
    assert params == {"lr": 0.05, "hidden": 4}
    assert {p.log_dir for p in points(data_out)} == {logger.log_dir}


class _ListExporter(MetricExporter):
    """Keeps exported exemplars in memory (a unit-test sink, not a backend)."""

    def __init__(self) -> None:
        super().__init__()
        self.points: list = []
        self.pid = os.getpid()

    def export(self, metrics_data, timeout_millis: float = 10_000, **kwargs) -> MetricExportResult:
        if os.getpid() == self.pid:
            self.points += points(metrics_data)
        return MetricExportResult.SUCCESS

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return True

    def shutdown(self, timeout_millis: float = 30_000, **kwargs) -> None:
        pass


class _Probe(torch.utils.data.Dataset):
    """Reports, from inside the worker, what the fork left in the capture path."""

    def __len__(self) -> int:
        return 8

    def __getitem__(self, index: int):
        from opentelemetry.instrumentation.tensorboard import lifecycle  # noqa: PLC0415
        from opentelemetry.instrumentation.tensorboard.reservoir import KeepAllExemplarReservoir  # noqa: PLC0415

        recorder = TensorBoardInstrumentor().recorder
        pending = len(recorder._pending) if recorder else -1
        reservoirs = [r for r in list(lifecycle._forked_resets) if isinstance(r, KeepAllExemplarReservoir)]
        held = sum(len(r._offered) for r in reservoirs) if reservoirs else -1  # -1: none found to check
        return torch.tensor([pending, held, os.getpid()])


def test_forked_dataloader_workers_neither_deadlock_nor_duplicate(tmp_path: Path) -> None:
    exporter = _ListExporter()
    provider = meter_provider([PeriodicExportingMetricReader(exporter, export_interval_millis=20)])
    instrumentor = TensorBoardInstrumentor()
    instrumentor.instrument(meter_provider=provider)
    try:
        writer = tensorboardX.SummaryWriter(str(tmp_path), write_to_disk=False)
        stop = threading.Event()
        logged = []

        def log() -> None:  # keeps the capture path and its locks busy while workers fork
            step = 0
            while not stop.is_set():
                writer.add_scalar("loss", float(step), step)
                logged.append(step)
                step += 1

        thread = threading.Thread(target=log)
        thread.start()
        seen = []
        for _epoch in range(4):
            loader = torch.utils.data.DataLoader(_Probe(), batch_size=2, num_workers=2, multiprocessing_context="fork")
            seen += [row for batch in loader for row in batch.tolist()]
        stop.set()
        thread.join()
        provider.force_flush()
    finally:
        instrumentor.uninstrument()
        provider.shutdown()
    assert len(seen) == 32 and all(pid != os.getpid() for _, _, pid in seen)
    assert all(pending == 0 and held == 0 for pending, held, _ in seen), seen
    assert sorted(p.step for p in exporter.points) == logged  # every point once, none twice


@pytest.mark.slow
def test_memory_stays_bounded_over_a_million_points(reader, tmp_path: Path) -> None:
    def rss_mib() -> float:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

    writer = tensorboardX.SummaryWriter(str(tmp_path), write_to_disk=False)
    interval, total, seen, rss = 50_000, 1_000_000, 0, []
    for start in range(0, total, interval):
        for step in range(start, start + interval):
            writer.add_scalar("loss", 0.5, step)
        seen += len(collect(reader))
        rss.append(rss_mib())
    assert seen == total
    # After the first intervals have warmed the allocator, memory must not track the point count:
    # 18 more intervals would add hundreds of MiB if points were kept.
    assert max(rss[3:]) - rss[2] < 40, rss


TRAIN = """
import math, sys
from torch.utils.tensorboard import SummaryWriter
writer = SummaryWriter(sys.argv[1])
for step in range(500):
    writer.add_scalar("loss", 1.0 / (step + 1), step)
    writer.add_scalar("lr", 0.1 if step < 250 else 0.01, step)
writer.add_scalar("loss", math.nan, 500)
writer.close()
"""


def _instrumented(script: Path, log_dir: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "opentelemetry-instrument"), sys.executable, str(script), str(log_dir)],
        env=subprocess_env(**env),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def _expected() -> list[tuple[str, int, float]]:
    rows = [("loss", s, 1.0 / (s + 1)) for s in range(500)] + [("lr", s, 0.1 if s < 250 else 0.01) for s in range(500)]
    return sorted(rows)


def test_zero_code_console(tmp_path: Path) -> None:
    script = tmp_path / "train.py"
    script.write_text(TRAIN)
    done = _instrumented(script, tmp_path / "runs", OTEL_METRICS_EXPORTER="console")
    assert done.returncode == 0, done.stderr[-3000:]
    rows = console_points(done.stdout)
    nan = [r for r in rows if r[1] == 500]
    assert len(nan) == 1 and nan[0][2] != nan[0][2]
    assert sorted(r for r in rows if r[1] != 500) == _expected()


BEFORE_IMPORT = """
import json, sys

heavy = ("torch", "tensorboardX", "pytorch_lightning", "lightning_fabric", "numpy")
loaded = sorted(name for name in heavy if name in sys.modules)
from tensorboardX import SummaryWriter

writer = SummaryWriter(sys.argv[1])
for step in range(5):
    writer.add_scalar("loss", step / 4, step)
writer.close()
print(json.dumps({"loaded": loaded}), flush=True)
"""


def test_zero_code_imports_nothing_before_the_script(tmp_path: Path) -> None:
    script = tmp_path / "train.py"
    script.write_text(BEFORE_IMPORT)
    done = _instrumented(script, tmp_path / "runs", OTEL_METRICS_EXPORTER="console")
    assert done.returncode == 0, done.stderr[-3000:]
    report = next(json.loads(line) for line in done.stdout.splitlines() if line.startswith('{"loaded"'))
    assert report["loaded"] == []  # torch, tensorboardX, Lightning and numpy load when the script imports them
    rows = console_points(done.stdout)
    assert sorted((tag, step) for tag, step, _value in rows) == [("loss", s) for s in range(5)]


def test_zero_code_otlp(tmp_path: Path) -> None:
    script = tmp_path / "train.py"
    script.write_text(TRAIN)
    with OtlpSink() as sink:
        done = _instrumented(
            script,
            tmp_path / "runs",
            OTEL_METRICS_EXPORTER="otlp",
            OTEL_EXPORTER_OTLP_METRICS_ENDPOINT=f"http://127.0.0.1:{sink.server_port}/v1/metrics",
        )
    assert done.returncode == 0, done.stderr[-3000:]
    rows = []
    for request in sink.requests:
        for rm in request.resource_metrics:
            resource = {kv.key: kv.value.string_value for kv in rm.resource.attributes}
            assert resource["service.name"] == "train"
            for sm in rm.scope_metrics:
                for m in sm.metrics:
                    if m.name != "tensorboard.scalar":
                        continue
                    for point in m.gauge.data_points:
                        tag = {kv.key: kv.value.string_value for kv in point.attributes}["tensorboard.tag"]
                        for e in point.exemplars:
                            step = {kv.key: kv.value.int_value for kv in e.filtered_attributes}["tensorboard.step"]
                            rows.append((tag, step, e.as_double))
    assert sorted(r for r in rows if r[1] != 500) == _expected()
    assert [r[2] != r[2] for r in rows if r[1] == 500] == [True]


def test_views_are_what_the_configurator_installs() -> None:
    provider = meter_provider([InMemoryMetricReader()])
    from opentelemetry.instrumentation.tensorboard.reservoir import has_views  # noqa: PLC0415

    assert has_views(provider) is True
    assert len(views()) == 1
    provider.shutdown()
