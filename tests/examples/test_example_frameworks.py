"""The document's framework, settings and error-handling examples, run as scripts against MLflow."""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path

from example_runs import ExampleRun, literal_arguments


def test_manual_framework_initialization(run_example: Callable[..., ExampleRun]) -> None:
    example = run_example("manual_framework_initialization", "framework_demo")
    assert example.run.info.run_name == "manual_pytorch"
    assert example.run.info.status == "FINISHED"  # no stop_logging in the script: tracelet's exit handler ends it
    assert "already instrumented" not in example.stderr


def test_enhanced_metric_logging_turns_type_and_metadata_into_tags(run_example: Callable[..., ExampleRun]) -> None:
    example = run_example("enhanced_metric_logging", "advanced_pytorch")
    assert example.run.info.run_name == "enhanced_metrics"
    calls = [
        literal_arguments(call, ["name", "value", "metric_type", "iteration", "metadata"])
        for call in example.calls("log_enhanced_metric")
    ]
    assert len(calls) == 2
    assert example.keys() == {call["name"] for call in calls}
    tags = example.run.data.tags
    for call in calls:
        name = call["name"]
        assert [(step, value) for step, value, _ in example.history(name)] == [(call["iteration"], call["value"])]
        assert tags[f"metric.{name}.metric_type"] == call["metric_type"]
        for key, value in call["metadata"].items():
            assert tags[f"metric.{name}.{key}"] == str(value)
    assert example.run.info.status == "FINISHED"


def test_framework_settings_object(run_example: Callable[..., ExampleRun]) -> None:
    example = run_example("framework_settings", "pytorch_config")
    assert example.run.info.run_name == "configured_pytorch"
    assert example.run.info.status == "FINISHED"


def test_tensorboard_patch_control_logs_directly(run_example: Callable[..., ExampleRun]) -> None:
    example = run_example("tensorboard_patch_control", "no_tensorboard")
    assert example.run.info.run_name == "manual_only"
    (call,) = example.calls("log_metric")
    logged = literal_arguments(call, ["name", "value", "iteration"])
    assert example.keys() == {logged["name"]}
    assert [(s, v) for s, v, _ in example.history(logged["name"])] == [(logged["iteration"], logged["value"])]
    assert example.run.info.status == "FINISHED"


def test_tensorboard_patch_control_captures_no_tensorboard_scalar(run_example: Callable[..., ExampleRun]) -> None:
    example = run_example(
        "tensorboard_patch_control",
        "no_tensorboard",
        then="""
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter("runs/after")
            for step in range(3):
                writer.add_scalar("tensorboard_only", step * 0.5, step)
            writer.close()
            framework.log_metric("manual_metric", 0.75, iteration=2)
        """,
    )
    assert [len(points) for points in example.tensorboard().values()] == [3]  # TensorBoard wrote them
    assert example.keys() == {"manual_metric"}  # and only the direct logging reached MLflow
    assert [(s, v) for s, v, _ in example.history("manual_metric")] == [(1, 0.5), (2, 0.75)]
    assert example.run.info.status == "FINISHED"


def test_tensorboard_import_issues_with_tensorboard(run_example: Callable[..., ExampleRun]) -> None:
    example = run_example("tensorboard_import_issues", "error_handling")
    assert "TensorBoard not available" not in example.stdout
    assert example.run.info.run_name == "safe_tensorboard"
    assert example.keys() == set()
    assert example.run.info.status == "FINISHED"


def test_tensorboard_import_issues_falls_back_without_tensorboard(
    run_example: Callable[..., ExampleRun], tmp_path: Path
) -> None:
    # A process in which torch.utils.tensorboard cannot be imported, as on a machine without tensorboard.
    blocker = tmp_path / "no_tensorboard"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(
        textwrap.dedent(
            """
            import importlib.abc, sys

            class NoTensorBoard(importlib.abc.MetaPathFinder):
                def find_spec(self, name, path=None, target=None):
                    if name == "torch.utils.tensorboard" or name.startswith("torch.utils.tensorboard."):
                        raise ImportError(f"No module named {name!r}")
                    return None

            sys.meta_path.insert(0, NoTensorBoard())
            """
        )
    )
    example = run_example("tensorboard_import_issues", "error_handling", PYTHONPATH=str(blocker))
    assert "TensorBoard not available" in example.stdout
    (call,) = example.calls("log_metric")
    logged = literal_arguments(call, ["name", "value"])
    assert example.run.info.run_name == "safe_tensorboard"
    assert [(s, v) for s, v, _ in example.history(logged["name"])] == [(0, logged["value"])]
    assert example.run.info.status == "FINISHED"


def test_framework_initialization_errors_finds_the_framework(run_example: Callable[..., ExampleRun]) -> None:
    example = run_example("framework_initialization_errors", "error_handling")
    assert "Framework initialization failed" not in example.stdout
    assert example.run.info.run_name == "framework_error_test"
    assert example.run.info.status == "FINISHED"


def test_resource_management_cleans_up_twice_without_complaint(run_example: Callable[..., ExampleRun]) -> None:
    example = run_example("resource_management", "best_practices")
    assert example.run.info.run_name == "resource_managed"
    assert example.run.info.status == "FINISHED"
    assert "Traceback" not in example.stderr
    assert "tracelet:" not in example.stderr  # no warning from the second stop_logging()
