"""The OpenTelemetry -> MLflow mapping rules (pure logic: in-memory reader, no server)."""

from __future__ import annotations

import math
import posixpath
import re

import pytest
import tensorboardX
from opentelemetry.exporter.otlp.proto.common.metrics_encoder import encode_metrics
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.resources import Resource

from opentelemetry.exporter.mlflow.mapping import Mapper, mlflow_name, run_key, writer_label
from opentelemetry.instrumentation.tensorboard import TensorBoardInstrumentor
from opentelemetry.instrumentation.tensorboard.capture import Recorder
from opentelemetry.instrumentation.tensorboard.configurator import meter_provider
from opentelemetry.instrumentation.tensorboard.writer_names import WriterNames, names_the_run

MLFLOW_NAME = re.compile(r"^[/\w.\- :]*$")


def acceptable(key: str) -> bool:
    """MLflow's own checks: allowed characters, length, and no path that resolves elsewhere."""
    norm = posixpath.normpath(key)
    return bool(MLFLOW_NAME.match(key)) and len(key) <= 250 and norm == key and not norm.startswith((".", "/"))


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("Loss/train", "Loss/train"),
        ("loss (λ=0.1)", "loss _λ_0.1_"),
        ("a//b", "a/b"),
        ("/lead/", "lead"),
        ("x/../y", "x/__/y"),
        ("./x", "_/x"),
        ("..hidden", "__hidden"),
        ("", "_"),
        ("acc@top#1", "acc_top_1"),
    ],
)
def test_mlflow_name(name: str, expected: str) -> None:
    assert mlflow_name(name) == expected
    assert acceptable(mlflow_name(name))


def test_long_names_keep_a_distinguishing_hash() -> None:
    first, second = "x" * 300 + "a", "x" * 300 + "b"
    assert len(mlflow_name(first)) == 250
    assert mlflow_name(first) != mlflow_name(second)
    assert mlflow_name(first) == mlflow_name(first)
    assert acceptable(mlflow_name(first))


@pytest.mark.parametrize(
    ("log_dir", "label"),
    [
        ("runs/train", "train"),
        ("runs/validation/", "validation"),
        ("runs/Nov26_15-49-00_myhost", None),
        ("runs/Nov26_15-49-00_myhostLR_0.1", None),
        ("lightning_logs/version_3", None),
        ("runs/CartPole-v1__ppo__1__1733059721", None),
        ("runs/resnet50", "resnet50"),
        (None, None),
    ],
)
def test_writer_label(log_dir: str | None, label: str | None) -> None:
    assert writer_label(log_dir) == label


@pytest.mark.parametrize(
    ("component", "run_specific"),
    [
        ("train", False),
        ("validation", False),
        ("resnet50", False),
        ("CartPole-v1", False),
        ("gpt2-small", False),
        ("Dec01_13-28-41_gpu7", True),  # TensorBoard's default
        ("version_0", True),  # Lightning's
        ("CartPole-v1__ppo__1__1733059721", True),  # CleanRL's env__exp__seed__time
        ("2026-12-01", True),
        ("20261201-130000", True),
        ("seed_3", True),
        ("seed3", True),
        ("lr0.01_bs32", True),
        ("run-3f2a9c1d7b", True),
        ("trainhost", True),  # holds the host name
    ],
)
def test_which_components_name_the_run(component: str, run_specific: bool) -> None:
    assert names_the_run(component, host="trainhost.example.org") is run_specific


def test_writer_names_are_unique_in_a_process_and_free_of_run_names() -> None:
    names = WriterNames(host="trainhost")
    given = [
        ("runs/resnet/train", "train"),
        ("runs/vit/train", "vit/train"),
        ("./runs/vit/train/", "vit/train"),  # the same directory, spelt differently
        ("runs/2026-12-01_trainhost/validation", "validation"),
        ("other/2026-12-01/validation", "other/validation"),
        ("lightning_logs/version_0", ""),
        ("lightning_logs/version_1", "lightning_logs"),
        ("runs/Dec01_13-28-41_trainhost", "runs"),
        ("Dec01_13-28-42_trainhost", "writer-2"),
        ("exp/seed_1/resnet/train", "resnet/train"),
        ("exp/seed_2/resnet/train", "exp/resnet/train"),  # the seed is skipped going up
    ]
    for log_dir, name in given:
        assert names.name(log_dir) == name, log_dir
    # Two runs of one script, with dates, seeds and times in their log dirs, get the same names.
    first, second = WriterNames(host="a"), WriterNames(host="b")
    for script_run, names_ in (("2026-12-01_a__seed1", first), ("2026-12-02_b__seed2", second)):
        assert [names_.name(f"runs/{script_run}/{w}") for w in ("train", "validation")] == ["train", "validation"]
        assert names_.name(f"runs/CartPole-v1__ppo__{script_run[-1]}__17330{script_run[9]}") == ""


def test_run_key_from_resource() -> None:
    base = {"service.instance.id": "abc", "service.name": "train"}
    assert run_key(base).run_name == "train"
    assert run_key({**base, "mlflow.run.name": "mine"}).run_name == "mine"
    assert run_key({**base, "service.name": "unknown_service:python"}).run_name is None
    assert run_key({**base, "distributed.rank": 2}).run_name == "train-rank2"
    assert run_key({**base, "distributed.rank": 0}).run_name == "train"
    assert run_key(base, default_experiment="exp").experiment_name == "exp"
    assert run_key({**base, "mlflow.experiment.name": "mine"}, "exp").experiment_name == "mine"
    assert dict(run_key(base).tags)["service.instance.id"] == "abc"


@pytest.fixture
def captured(tmp_path):
    reader = InMemoryMetricReader()
    provider = meter_provider([reader], Resource.create({"service.name": "train", "mlflow.experiment.name": "e"}))
    instrumentor = TensorBoardInstrumentor()
    instrumentor.instrument(meter_provider=provider)
    train = tensorboardX.SummaryWriter(str(tmp_path / "train"), write_to_disk=False)
    val = tensorboardX.SummaryWriter(str(tmp_path / "validation"), write_to_disk=False)
    for step in range(3):
        train.add_scalar("Loss", 1.0 / (step + 1), step, walltime=1000.0 + step)
        val.add_scalar("Loss", math.nan if step == 1 else 2.0, step, walltime=2000.5 + step)
    train.add_scalar("bad#tag", 1.0, 0, walltime=3000.0)
    train.add_hparams({"lr": 0.1, "nested": {"depth": 2}}, {"hp/acc": 0.5}, global_step=9)
    yield reader.get_metrics_data()
    instrumentor.uninstrument()
    provider.shutdown()


def test_points_map_to_keys_steps_and_times(captured) -> None:
    (batch,) = Mapper().from_sdk(captured)
    assert batch.run.run_name == "train"
    assert batch.run.experiment_name == "e"
    rows = {(key, step): (value, ms) for key, value, ms, step in batch.metrics}
    assert rows[("train/Loss", 0)] == (1.0, 1_000_000)
    assert rows[("train/Loss", 2)] == (1.0 / 3, 1_002_000)
    assert rows[("validation/Loss", 0)] == (2.0, 2_000_500)
    assert math.isnan(rows[("validation/Loss", 1)][0])
    assert ("train/bad_tag", 0) in rows
    assert rows[("train/hp/acc", 9)][0] == 0.5
    assert len(batch.metrics) == 8
    assert batch.params == {"lr": "0.1", "nested/depth": "2"}


def test_log_dirs_go_on_the_run_not_in_the_keys(captured, tmp_path) -> None:
    (batch,) = Mapper().from_sdk(captured)
    assert batch.tags["tensorboard.log_dir.train"] == str(tmp_path / "train")
    assert batch.tags["tensorboard.log_dir.validation"] == str(tmp_path / "validation")


def _map_writers(tmp_path, writes) -> tuple[list, object]:
    reader = InMemoryMetricReader()
    provider = meter_provider([reader], Resource.create({"service.name": "train"}))
    instrumentor = TensorBoardInstrumentor()
    instrumentor.instrument(meter_provider=provider)
    try:
        import torch.utils.tensorboard  # noqa: PLC0415

        writers = {}
        for log_dir, tag, value in writes:
            if log_dir not in writers:
                writers[log_dir] = torch.utils.tensorboard.SummaryWriter(str(tmp_path / log_dir))
            writers[log_dir].add_scalar(tag, value, 0)
        for writer in writers.values():
            writer.close()
        data = reader.get_metrics_data()
    finally:
        instrumentor.uninstrument()
        provider.shutdown()
    return Mapper().from_sdk(data), data


def test_series_never_share_a_key_in_one_run(tmp_path, caplog) -> None:
    (batch,), _data = _map_writers(
        tmp_path,
        [
            ("runs/resnet/train", "Loss", 1.0),
            ("runs/vit/train", "Loss", 2.0),
            ("runs/resnet/train", "a?b", 3.0),  # torch keeps the tag; MLflow refuses "?" and "#"
            ("runs/resnet/train", "a#b", 4.0),
        ],
    )
    keys = {value: key for key, value, _ms, _step in batch.metrics}
    assert keys[1.0] == "train/Loss"
    assert keys[2.0] == "vit/train/Loss"
    assert keys[3.0] == "train/a_b"
    assert re.fullmatch(r"train/a_b-[0-9a-f]{8}", keys[4.0])
    assert len(set(keys.values())) == 4
    assert sum("would both be stored as 'train/a_b'" in r.getMessage() for r in caplog.records) == 1


def test_run_names_in_log_dirs_stay_out_of_keys(tmp_path) -> None:
    keys = []
    for run_dir in ("CartPole-v1__ppo__1__1733059721", "CartPole-v1__ppo__2__1733060000"):
        (batch,), _data = _map_writers(tmp_path / run_dir, [(f"runs/{run_dir}", "charts/episodic_return", 9.0)])
        keys.append([key for key, *_ in batch.metrics])
        assert batch.tags["tensorboard.log_dir"].endswith(f"runs/{run_dir}")
    assert keys == [["charts/episodic_return"], ["charts/episodic_return"]]


def test_otlp_and_sdk_paths_map_identically(captured) -> None:
    from_sdk = Mapper().from_sdk(captured)
    from_otlp = Mapper().from_otlp(encode_metrics(captured))
    assert len(from_sdk) == len(from_otlp) == 1
    sdk, otlp = from_sdk[0], from_otlp[0]
    assert sdk.run == otlp.run
    assert sdk.params == otlp.params
    same = [
        a[0] == b[0] and a[2:] == b[2:] and (a[1] == b[1] or (math.isnan(a[1]) and math.isnan(b[1])))
        for a, b in zip(sdk.metrics, otlp.metrics, strict=True)
    ]
    assert all(same)


def test_every_batch_carries_the_params_and_metadata_its_points_imply(tmp_path) -> None:
    """The mapper keeps no record of delivery: which of these MLflow holds is the writer's to know
    (tests/exporter/test_writer_acknowledged.py: each is sent again only when it changes)."""
    reader = InMemoryMetricReader()
    provider = meter_provider([reader])
    meter = provider.get_meter("tracelet")
    recorder = Recorder(meter)
    mapper = Mapper()
    recorder.hparams({"lr": 0.1}, None)
    recorder.scalar("acc", 0.9, 1, 10.0, None, {"dataset": "validation", "metric_type": "accuracy"})
    (first,) = mapper.from_sdk(reader.get_metrics_data())
    assert first.params == {"lr": "0.1"}
    assert first.tags == {"metric.acc.dataset": "validation", "metric.acc.metric_type": "accuracy"}
    recorder.scalar("acc", 0.95, 2, 11.0, None, {"dataset": "test", "metric_type": "accuracy"})
    (second,) = mapper.from_sdk(reader.get_metrics_data())
    assert second.params == {"lr": "0.1"}  # the info series is exported again
    assert second.tags == {"metric.acc.dataset": "test", "metric.acc.metric_type": "accuracy"}
    assert [(k, v, s) for k, v, _, s in second.metrics] == [("acc", 0.95, 2)]
    provider.shutdown()


def test_wall_times_no_timestamp_holds_land_at_zero_and_alone(tmp_path, caplog) -> None:
    reader = InMemoryMetricReader()
    provider = meter_provider([reader], Resource.create({"service.name": "train"}))
    instrumentor = TensorBoardInstrumentor()
    instrumentor.instrument(meter_provider=provider)
    try:
        writer = tensorboardX.SummaryWriter(str(tmp_path / "train"))
        for step, walltime in enumerate([1000.0, math.nan, -100.0, 1e20, math.inf, 1001.0]):
            writer.add_scalar("loss", float(step), step, walltime=walltime)
        writer.close()
        data = reader.get_metrics_data()
    finally:
        instrumentor.uninstrument()
        provider.shutdown()
    (batch,) = Mapper().from_sdk(data)
    assert [(step, ms) for _key, _value, ms, step in batch.metrics] == [
        (0, 1_000_000),
        (1, 0),
        (2, 0),
        (3, 0),
        (4, 0),
        (5, 1_001_000),
    ]
    encode_metrics(data)  # OTLP's fixed64 takes every exemplar time
    assert sum("no timestamp can hold" in r.getMessage() for r in caplog.records) == 1  # once per tag


def test_a_rank_that_is_not_an_integer_stays_a_tag() -> None:
    key = run_key({"service.instance.id": "abc", "service.name": "train", "distributed.rank": "worker-a"})
    assert key.rank is None and key.run_name == "train"
    assert dict(key.tags)["distributed.rank"] == "worker-a"


def test_a_step_that_is_not_an_integer_drops_that_point_alone(caplog) -> None:
    resource = {"service.instance.id": "abc"}
    exemplars = [(1.0, 10**15, {"tensorboard.step": 1}), (2.0, 10**15, {"tensorboard.step": "x"}), (3.0, 10**15, {})]
    (batch,) = Mapper().map([(resource, "tensorboard.scalar", {"tensorboard.tag": "loss"}, 3.0, exemplars)])
    assert [(value, step) for _key, value, _ms, step in batch.metrics] == [(1.0, 1), (3.0, 0)]
    assert sum("not an integer" in r.getMessage() for r in caplog.records) == 1


def test_capture_goes_on_after_a_bad_point_was_queued_at_uninstrument(tmp_path) -> None:
    reader = InMemoryMetricReader()
    provider = meter_provider([reader])
    instrumentor = TensorBoardInstrumentor()
    writer = tensorboardX.SummaryWriter(str(tmp_path / "train"), write_to_disk=False)
    try:
        instrumentor.instrument(meter_provider=provider)
        writer.add_scalar("loss", math.nan, 0, walltime=math.nan)
        instrumentor.uninstrument()
        instrumentor.instrument(meter_provider=provider)
        writer.add_scalar("loss", 1.0, 1, walltime=1000.0)
        data = reader.get_metrics_data()
    finally:
        instrumentor.uninstrument()
        provider.shutdown()
    (batch,) = Mapper().from_sdk(data)
    assert [(step, ms) for _key, _value, ms, step in batch.metrics] == [(0, 0), (1, 1_000_000)]


def _scalar(log_dir: str, writer: str | None, tag: str = "loss") -> tuple:
    attributes = {"tensorboard.tag": tag, "tensorboard.log_dir": log_dir}
    if writer is not None:
        attributes["tensorboard.writer"] = writer
    return "tensorboard.scalar", attributes, 1.0, [(1.0, 10**15, {"tensorboard.step": 1})]


SOURCE = {
    "service.instance.id": "abc",
    "service.name": "train",
    "mlflow.source.name": "/home/me/project/train.py",
    "mlflow.user": "me",
    "tracelet.version": "9.8.7",
}


def test_the_source_travels_on_the_resource_into_the_run_tags() -> None:
    tags = dict(run_key(SOURCE).tags)
    assert tags["mlflow.source.name"] == "/home/me/project/train.py"
    assert tags["mlflow.source.type"] == "LOCAL"
    assert tags["mlflow.user"] == "me"
    assert tags["tracelet.version"] == "9.8.7"
    assert "mlflow.source.type" not in dict(run_key({"service.instance.id": "abc"}).tags)


def test_the_description_names_script_version_and_log_dirs_and_grows_with_writers() -> None:
    mapper = Mapper()
    (first,) = mapper.map([(SOURCE, *_scalar("runs/exp/train", "train")), (SOURCE, *_scalar("runs/Dec01_host", ""))])
    assert first.tags["mlflow.note.content"] == (
        "TensorBoard scalars of `train.py`, captured by tracelet 9.8.7.\n\n"
        "Log dirs: `runs/exp/train` (keys `train/...`), `runs/Dec01_host`\n\n"
        "Script: `/home/me/project/train.py`"
    )
    (again,) = mapper.map([(SOURCE, *_scalar("runs/exp/train", "train"))])
    assert again.tags["mlflow.note.content"] == first.tags["mlflow.note.content"]  # unchanged
    (grown,) = mapper.map([(SOURCE, *_scalar("runs/exp/validation", "validation"))])
    assert (
        "Log dirs: `runs/exp/train` (keys `train/...`), `runs/Dec01_host`, "
        "`runs/exp/validation` (keys `validation/...`)" in grown.tags["mlflow.note.content"]
    )
    mapper.forget(grown.run)  # a delivery that failed: the description goes again, whole
    (resent,) = mapper.map([(SOURCE, *_scalar("runs/exp/train", "train"))])
    assert resent.tags["mlflow.note.content"] == grown.tags["mlflow.note.content"]


def test_a_description_the_script_sets_is_never_replaced() -> None:
    mapper = Mapper()
    own = ("mlflow.run.tag", {"mlflow.tag.name": "mlflow.note.content", "mlflow.tag.value": "mine"}, 1.0, [])
    (batch,) = mapper.map([(SOURCE, *_scalar("runs/train", None)), (SOURCE, *own)])
    assert batch.tags["mlflow.note.content"] == "mine"
    mapper.forget(batch.run)
    (later,) = mapper.map([(SOURCE, *_scalar("runs/validation", None))])
    assert "mlflow.note.content" not in later.tags
    assert later.tags["tensorboard.log_dir.validation"] == "runs/validation"
