"""TensorBoardInstrumentor against real torch, tensorboard and tensorboardX writers."""

from __future__ import annotations

import logging
import math
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import tensorboardX
import torch.utils.tensorboard
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from points import collect, event_scalars, metric

from opentelemetry.instrumentation.tensorboard import TensorBoardInstrumentor
from opentelemetry.instrumentation.tensorboard.capture import nanoseconds
from opentelemetry.instrumentation.tensorboard.configurator import meter_provider

WRITERS = {
    "torch": torch.utils.tensorboard.SummaryWriter,
    "tensorboardX": tensorboardX.SummaryWriter,
}
PATCHED = [(cls, name) for cls in WRITERS.values() for name in ("add_scalar", "add_scalars", "add_hparams")]


@pytest.fixture(params=sorted(WRITERS))
def writer_cls(request: pytest.FixtureRequest) -> type:
    return WRITERS[request.param]


def test_add_scalar_forms_match_the_event_file(reader, writer_cls, tmp_path: Path) -> None:
    writer = writer_cls(str(tmp_path))
    writer.add_scalar("plain", 0.1, 1)
    writer.add_scalar("walltime", 0.2, 2, walltime=1_700_000_000.25)
    writer.add_scalar("no_step", 0.3)
    writer.add_scalar("tensor_step", 0.4, torch.tensor(7))
    writer.add_scalar("tensor_value", torch.tensor(0.5), 8)
    if writer_cls is WRITERS["torch"]:
        writer.add_scalar("new_style", 0.6, 9, new_style=True)
        writer.add_scalar("double", 0.7, 10, double_precision=True, new_style=True)
    writer.close()

    captured = {p.tag: p for p in collect(reader)}
    written = {tag: (step, value, wall) for tag, step, value, wall in event_scalars(tmp_path)}
    assert set(captured) == set(written)
    for tag, (step, value, wall) in written.items():
        point = captured[tag]
        assert point.log_dir == str(tmp_path)
        assert (point.step if point.step is not None else 0) == step, tag
        # TensorBoard keeps float32 by default; the point keeps the Python value.
        assert point.value == pytest.approx(value, rel=1e-6), tag
        assert point.time_ns == nanoseconds(wall), tag  # the very wall time TensorBoard wrote
    assert captured["no_step"].step is None
    assert captured["plain"].value == 0.1  # not float32's 0.10000000149
    assert captured["walltime"].time_ns == 1_700_000_000_250_000_000


def test_tensorboardx_use_metadata_step_and_walltime_as_written(reader, tmp_path: Path) -> None:
    writer = tensorboardX.SummaryWriter(str(tmp_path))
    file_writer = writer._get_file_writer()
    with file_writer.use_metadata(global_step=10, walltime=1_600_000_000.125):
        writer.add_scalar("both", 1.0)
        # add_scalars writes through other file writers, which have no metadata: step 0, own clock
        writer.add_scalars("group", {"a": 2.0, "b": 3.0})
    with file_writer.use_metadata(global_step=20):  # no walltime: tensorboardX writes 0
        writer.add_scalar("step_only", 4.0)
    with file_writer.use_metadata(walltime=1_600_000_001.5):
        writer.add_scalar("walltime_only", 5.0, 3)
    writer.close()

    captured = {p.tag: p for p in collect(reader)}
    written = {tag: (step, wall) for tag, step, _value, wall in event_scalars(tmp_path)}
    assert written["both"] == (10, 1_600_000_000.125)
    assert written["step_only"] == (20, 0.0)
    assert written["walltime_only"] == (3, 1_600_000_001.5)
    for tag, (step, wall) in written.items():
        if tag == "group":
            continue
        assert (captured[tag].step, captured[tag].time_ns) == (step, nanoseconds(wall)), tag
    group = sorted((step, nanoseconds(wall)) for tag, step, _value, wall in event_scalars(tmp_path) if tag == "group")
    assert group[0][0] == 0
    assert sorted((captured[f"group/{key}"].step or 0, captured[f"group/{key}"].time_ns) for key in "ab") == group


def test_tensorboardx_cleaned_tags_are_the_captured_tags(reader, tmp_path: Path) -> None:
    writer = tensorboardX.SummaryWriter(str(tmp_path))
    writer.add_scalar("val acc (%)", 0.5, 1)
    writer.add_scalar("/leading/slash", 0.25, 1)
    writer.add_scalars("loss (sum)", {"train": 1.0}, 1)
    writer.close()
    written = {tag for tag, *_ in event_scalars(tmp_path)}
    assert written == {"val_acc____", "leading/slash", "loss__sum_"}
    assert {p.tag for p in collect(reader)} == {"val_acc____", "leading/slash", "loss__sum_/train"}


def test_add_scalars_stops_where_tensorboard_stops(reader, writer_cls, tmp_path: Path) -> None:
    writer = writer_cls(str(tmp_path))
    with pytest.raises((AssertionError, ValueError, TypeError)):
        writer.add_scalars("m", {"first": 1.0, "second": np.array([1.0, 2.0]), "third": 3.0}, 4)
    writer.close()
    assert [(tag, step) for tag, step, *_ in event_scalars(tmp_path)] == [("m", 4)]
    assert [(p.tag, p.step, p.value) for p in collect(reader)] == [("m/first", 4, 1.0)]


class _Clock:
    """A deterministic ``time.time`` for the calling thread: the same calls give the same wall times.

    The event writers' own threads (flush timing, never written to a file) keep the real clock.
    """

    def __init__(self) -> None:
        self.now = 1_700_000_000.0
        self.thread = threading.get_ident()
        self.real = time.time

    def __call__(self) -> float:
        if threading.get_ident() != self.thread:
            return self.real()
        self.now += 0.001953125  # exact in binary
        return self.now


def _write_everything(writer_cls: type, log_dir: Path) -> None:
    writer = writer_cls(str(log_dir), filename_suffix=".same")
    for step in range(5):
        writer.add_scalar("plain", 0.1 * step, step)
        writer.add_scalar("no_step", np.array([step]))
        writer.add_scalar("tensor", torch.tensor(step / 3), torch.tensor(step))
        writer.add_scalars("group", {"a": step, "b": -step}, step)
    writer.add_scalar("walltime", 1.5, 9, walltime=1_650_000_000.5)
    if writer_cls is tensorboardX.SummaryWriter:
        with writer._get_file_writer().use_metadata(global_step=77):
            writer.add_scalar("metadata", 2.5)
    writer.add_hparams({"lr": 0.1}, {"hp/score": 0.5})
    writer.close()


def _event_files(root: Path) -> dict[str, bytes]:
    # File names hold the clock's time, the host and the pid; the order of creation is what matters.
    files = sorted(root.rglob("events.out.tfevents.*"), key=lambda path: (str(path.parent), path.name))
    return {f"{path.parent.relative_to(root)}#{index}": path.read_bytes() for index, path in enumerate(files)}


def test_event_files_are_identical_with_and_without_capture(writer_cls, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(time, "time", _Clock())
    _write_everything(writer_cls, tmp_path / "plain")

    monkeypatch.setattr(time, "time", _Clock())
    reader = InMemoryMetricReader()
    provider = meter_provider([reader])
    instrumentor = TensorBoardInstrumentor()
    instrumentor.instrument(meter_provider=provider)
    try:
        _write_everything(writer_cls, tmp_path / "captured")
        captured = collect(reader)
    finally:
        instrumentor.uninstrument()
        provider.shutdown()

    plain, with_capture = _event_files(tmp_path / "plain"), _event_files(tmp_path / "captured")
    assert len(plain) >= 4
    assert plain == with_capture
    assert len(captured) == 5 * 5 + 1 + 1 + (writer_cls is tensorboardX.SummaryWriter)


ONE_ELEMENT = {
    "ndarray_1": lambda: np.array([1.25]),  # gymnasium's RecordEpisodeStatistics hands these over
    "ndarray_1x1": lambda: np.array([[2.5]], dtype=np.float32),
    "numpy_float32": lambda: np.float32(0.1),
    "numpy_int64": lambda: np.int64(7),
    "tensor_0d": lambda: torch.tensor(3.5),
    "tensor_1": lambda: torch.tensor([4.5]),
    "tensor_int": lambda: torch.tensor(9),
    "bool": lambda: True,
    "int": lambda: 11,
}


def test_every_one_element_value_lands_as_tensorboard_writes_it(reader, writer_cls, tmp_path: Path) -> None:
    writer = writer_cls(str(tmp_path))
    for step, (tag, make) in enumerate(ONE_ELEMENT.items()):
        writer.add_scalar(tag, make(), step)
    with pytest.raises((AssertionError, ValueError, TypeError)):  # TensorBoard's own refusal
        writer.add_scalar("two_elements", np.array([1.0, 2.0]), 0)
    writer.close()
    captured = {p.tag: p for p in collect(reader)}
    written = {tag: (step, value) for tag, step, value, _ in event_scalars(tmp_path)}
    assert set(captured) == set(written) == set(ONE_ELEMENT)
    for tag, (step, value) in written.items():
        assert captured[tag].step == step, tag
        assert np.float32(captured[tag].value) == np.float32(value), tag  # TensorBoard keeps float32
        assert type(captured[tag].value) is float, tag
    assert captured["ndarray_1"].value == 1.25


def test_add_scalars_captures_one_element_arrays(reader, writer_cls, tmp_path: Path) -> None:
    writer = writer_cls(str(tmp_path))
    writer.add_scalars("episode", {"return": np.array([10.5]), "length": np.array([200])}, 0)
    writer.close()
    got = sorted((p.tag, p.step, p.value) for p in collect(reader))
    assert got == [("episode/length", 0, 200.0), ("episode/return", 0, 10.5)]


def test_add_scalars_names_each_key(reader, writer_cls, tmp_path: Path) -> None:
    writer = writer_cls(str(tmp_path))
    for step in range(3):
        writer.add_scalars("loss", {"train": step * 1.0, "val": step * 2.0}, step)
    writer.close()
    got = sorted((p.tag, p.step, p.value, p.log_dir) for p in collect(reader))
    expected = sorted(
        (f"loss/{key}", step, step * factor, str(tmp_path))
        for step in range(3)
        for key, factor in (("train", 1), ("val", 2))
    )
    assert got == expected


def test_add_hparams_records_params_and_metrics_once(reader, writer_cls, tmp_path: Path) -> None:
    writer = writer_cls(str(tmp_path))
    writer.add_hparams({"lr": 0.01, "optimizer": "adam", "layers": 3, "bn": True}, {"hp/accuracy": 0.93}, global_step=5)
    writer.close()
    data = reader.get_metrics_data()
    params = {
        p.attributes["tensorboard.hparam.name"]: p.attributes["tensorboard.hparam.value"]
        for p in metric(data, "tensorboard.hparam")
    }
    assert params == {"lr": 0.01, "optimizer": "adam", "layers": 3, "bn": True}
    from points import points  # noqa: PLC0415

    captured = points(data)
    assert [(p.tag, p.step, p.value, p.log_dir) for p in captured] == [("hp/accuracy", 5, 0.93, str(tmp_path))]


def test_writer_created_before_instrument_and_several_writers(writer_cls, tmp_path: Path) -> None:
    early = writer_cls(str(tmp_path / "train"))
    reader = InMemoryMetricReader()
    provider = meter_provider([reader])
    instrumentor = TensorBoardInstrumentor()
    instrumentor.instrument(meter_provider=provider)
    try:
        late = writer_cls(str(tmp_path / "validation"))
        for step in range(4):
            early.add_scalar("Loss", 1.0 / (step + 1), step)
            late.add_scalar("Loss", 2.0 / (step + 1), step)
        got = sorted((p.log_dir, p.step, p.value) for p in collect(reader))
        assert got == sorted(
            [(str(tmp_path / "train"), s, 1.0 / (s + 1)) for s in range(4)]
            + [(str(tmp_path / "validation"), s, 2.0 / (s + 1)) for s in range(4)]
        )
    finally:
        instrumentor.uninstrument()
        provider.shutdown()


def test_hundred_thousand_points_between_two_collections(reader, tmp_path: Path) -> None:
    writer = tensorboardX.SummaryWriter(str(tmp_path), write_to_disk=False)
    calls = 100_000
    for step in range(calls):
        writer.add_scalar("loss", step * 0.25, step, walltime=1_600_000_000 + step)
    captured = collect(reader)
    assert len(captured) == calls
    assert [(p.step, p.value, p.time_ns) for p in captured] == [
        (step, step * 0.25, (1_600_000_000 + step) * 10**9) for step in range(calls)
    ]
    assert collect(reader) == []  # the next collection starts empty


def test_non_finite_values_arrive(reader, writer_cls, tmp_path: Path) -> None:
    writer = writer_cls(str(tmp_path))
    for step, value in enumerate([1.0, math.nan, math.inf, -math.inf, 2.0]):
        writer.add_scalar("loss", value, step)
    writer.close()
    values = [p.value for p in sorted(collect(reader), key=lambda p: p.step)]
    assert values[0] == 1.0 and math.isnan(values[1]) and values[2:] == [math.inf, -math.inf, 2.0]


def test_streams_do_not_grow_with_steps(reader, tmp_path: Path) -> None:
    writers = [tensorboardX.SummaryWriter(str(tmp_path / name), write_to_disk=False) for name in ("a", "b")]
    tags = ["loss", "acc", "lr"]

    def log(steps: range) -> int:
        for step in steps:
            for writer in writers:
                for tag in tags:
                    writer.add_scalar(tag, step, step)
        return len(metric(reader.get_metrics_data(), "tensorboard.scalar"))

    assert log(range(10)) == len(tags) * len(writers)
    assert log(range(10, 3_000)) == len(tags) * len(writers)


def test_uninstrument_restores_methods_exactly() -> None:
    originals = {(cls, name): cls.__dict__[name] for cls, name in PATCHED}
    instrumentor = TensorBoardInstrumentor()
    provider = meter_provider([InMemoryMetricReader()])
    instrumentor.instrument(meter_provider=provider)
    assert all(cls.__dict__[name] is not originals[(cls, name)] for cls, name in PATCHED)
    instrumentor.uninstrument()
    assert all(cls.__dict__[name] is originals[(cls, name)] for cls, name in PATCHED)
    provider.shutdown()


def test_second_instrument_does_not_double_capture(reader, tmp_path: Path) -> None:
    TensorBoardInstrumentor().instrument()  # already instrumented: a warning, no second wrapper
    writer = tensorboardX.SummaryWriter(str(tmp_path), write_to_disk=False)
    writer.add_scalar("once", 1.0, 1)
    assert [(p.tag, p.step) for p in collect(reader)] == [("once", 1)]


def test_eight_threads_lose_nothing(reader, tmp_path: Path) -> None:
    writer = torch.utils.tensorboard.SummaryWriter(str(tmp_path))
    per_thread = 2_000
    barrier = threading.Barrier(8)

    def work(n: int) -> None:
        barrier.wait()
        for step in range(per_thread):
            writer.add_scalar(f"thread{n}", n * 10_000 + step, step)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    collected = []
    for thread in threads:
        thread.start()
    while any(t.is_alive() for t in threads):
        collected += collect(reader)  # collections race with the writers
        time.sleep(0.005)  # a spinning collector would starve the writers of the GIL
    collected += collect(reader)
    writer.close()
    assert len(collected) == 8 * per_thread
    for n in range(8):
        mine = [p for p in collected if p.tag == f"thread{n}"]
        assert [(p.step, p.value) for p in mine] == [(s, n * 10_000 + s) for s in range(per_thread)]


def test_tensorboard_error_reaches_caller_and_records_nothing(reader, writer_cls, tmp_path: Path) -> None:
    writer = writer_cls(str(tmp_path))
    with pytest.raises(Exception) as raised:
        writer.add_scalar("bad", "not a number", 1)
    plain = writer_cls(str(tmp_path / "plain"))
    TensorBoardInstrumentor().uninstrument()
    with pytest.raises(type(raised.value)):
        plain.add_scalar("bad", "not a number", 1)
    assert collect(reader) == []


def test_capture_failure_warns_once_and_training_goes_on(reader, tmp_path: Path, monkeypatch, caplog) -> None:
    recorder = TensorBoardInstrumentor().recorder
    assert recorder is not None

    class Broken:
        def append(self, _point):
            raise RuntimeError("disk on fire")

    monkeypatch.setattr(recorder, "_pending", Broken())
    writer = tensorboardX.SummaryWriter(str(tmp_path))
    with caplog.at_level(logging.WARNING):
        for step in range(100):
            writer.add_scalar("loss", 1.0, step)
    writer.close()
    warnings = [r for r in caplog.records if "disk on fire" in r.getMessage()]
    assert len(warnings) == 1
    assert len(event_scalars(tmp_path)) == 100  # TensorBoard itself got every call


def test_a_reader_that_never_collects_holds_bounded_memory(monkeypatch, caplog, tmp_path: Path) -> None:
    from opentelemetry.instrumentation.tensorboard import reservoir  # noqa: PLC0415

    monkeypatch.setattr(reservoir, "MAX_POINTS", 50)
    idle, active = InMemoryMetricReader(), InMemoryMetricReader()
    provider = meter_provider([idle, active])
    instrumentor = TensorBoardInstrumentor()
    instrumentor.instrument(meter_provider=provider)
    try:
        writer = tensorboardX.SummaryWriter(str(tmp_path), write_to_disk=False)
        with caplog.at_level(logging.WARNING):
            for round_ in range(3):
                for step in range(40):
                    writer.add_scalar("loss", 1.0, round_ * 40 + step)
                assert len(collect(active)) == 40  # the collecting reader gets every point
        assert len(collect(idle)) == 50
        assert len([r for r in caplog.records if "has not collected 50 points" in r.getMessage()]) == 1
    finally:
        instrumentor.uninstrument()
        provider.shutdown()


def test_points_beyond_max_pending_are_drained_off_the_caller(reader, tmp_path: Path) -> None:
    recorder = TensorBoardInstrumentor().recorder
    recorder.max_pending = 1_000
    drained_by: set[str] = set()
    drain = recorder.drain

    def tracking_drain() -> int:
        drained_by.add(threading.current_thread().name)
        return drain()

    recorder.drain = tracking_drain
    writer = tensorboardX.SummaryWriter(str(tmp_path), write_to_disk=False)
    most_waiting = 0
    for step in range(30_000):
        writer.add_scalar("loss", float(step), step)
        most_waiting = max(most_waiting, len(recorder._pending))
    captured = collect(reader)
    assert sorted(p.step for p in captured) == list(range(30_000))  # once each, none lost
    assert "tensorboard-drain" in drained_by
    assert most_waiting <= 4 * recorder.max_pending + 1
