"""The document's TensorBoard examples, run as scripts: every point they write lands in MLflow."""

from __future__ import annotations

import math
from collections.abc import Callable

from example_runs import ExampleRun, assert_same_points


def only_writer(written: dict[tuple[str, str], list], writers: int = 1) -> dict[str, list]:
    """tag -> points for a script with one default ``SummaryWriter()`` (its generated dir gives no key prefix)."""
    assert len({directory for directory, _ in written}) == writers, written.keys()
    return {tag: points for (_, tag), points in written.items()}


def assert_run_has_exactly(example: ExampleRun, written: dict[str, list], exact: bool = False) -> None:
    assert example.keys() == set(written)
    for key, points in written.items():
        assert_same_points(example.history(key), points, exact=exact)
    assert example.run.info.status == "FINISHED"


def test_automatic_tensorboard_interception(run_example: Callable[..., ExampleRun]) -> None:
    example = run_example("automatic_tensorboard_interception", "pytorch_examples")
    assert example.run.info.run_name == "pytorch_auto_demo"
    written = only_writer(example.tensorboard())
    assert set(written) == {"Loss/Train", "Learning_Rate"}
    assert [len(points) for points in written.values()] == [100, 100]
    assert_run_has_exactly(example, written)


def test_multi_writer_support_keeps_the_writers_apart(run_example: Callable[..., ExampleRun]) -> None:
    example = run_example("multi_writer_support", "tensorboard_demo")
    assert example.run.info.run_name == "multi_writer"
    written = example.tensorboard()
    assert set(written) == {(d, t) for d in ("train", "validation") for t in ("Loss", "Accuracy")}
    by_key = {f"{directory}/{tag}": points for (directory, tag), points in written.items()}
    assert_run_has_exactly(example, by_key)
    # MLflow holds the Python values themselves (TensorBoard's files hold float32 copies).
    train = [(epoch, 1.0 / (epoch + 1)) for epoch in range(50)]
    assert [(s, v) for s, v, _ in example.history("train/Loss")] == train
    assert [(s, v) for s, v, _ in example.history("validation/Loss")] == [(e, v * 1.1) for e, v in train if e % 5 == 0]


def test_custom_metric_processing_logs_the_smoothed_loss_beside_the_captured_one(
    run_example: Callable[..., ExampleRun],
) -> None:
    example = run_example("custom_metric_processing", "advanced_features")
    assert example.run.info.run_name == "custom_processing"
    written = only_writer(example.tensorboard())
    assert set(written) == {"train_loss"}
    assert example.keys() == {"train_loss", "train_loss_smoothed"}
    assert_same_points(example.history("train_loss"), written["train_loss"])
    # The smoothed series, recomputed from the exact losses the script logged.
    losses = [value for _, value, _ in example.history("train_loss")]
    expected = [(epoch, sum(losses[epoch - 4 : epoch + 1]) / 5) for epoch in range(4, len(losses))]
    assert [(s, v) for s, v, _ in example.history("train_loss_smoothed")] == expected
    assert example.run.info.status == "FINISHED"


def test_metric_naming_conventions_keep_their_prefixes(run_example: Callable[..., ExampleRun]) -> None:
    example = run_example("metric_naming_conventions", "best_practices")
    written = only_writer(example.tensorboard())
    assert set(written) == {
        "train/loss",
        "train/accuracy",
        "val/loss",
        "val/accuracy",
        "lr/learning_rate",
        "gpu/memory_usage",
    }
    assert_run_has_exactly(example, written)
    assert [(s, v) for s, v, _ in example.history("gpu/memory_usage")] == [
        (epoch, 512.0 + 16.0 * math.sin(epoch)) for epoch in range(20)
    ]


def test_performance_optimization_logs_every_tenth_epoch(run_example: Callable[..., ExampleRun]) -> None:
    example = run_example("performance_optimization", "performance")
    assert example.run.info.run_name == "optimized_logging"
    written = only_writer(example.tensorboard())
    assert set(written) == {"train_loss", "avg_loss_10_epochs"}
    assert_run_has_exactly(example, written)
    for key in written:
        assert [(s, v) for s, v, _ in example.history(key)] == [(e, 1.0 / (e + 1)) for e in range(0, 1000, 10)]
