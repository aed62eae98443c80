"""The slower examples: a real Lightning fit, a two-process gloo job, and the README's train.py."""

from __future__ import annotations

import getpass
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path

from example_runs import EXAMPLES, ExampleRun, assert_same_points, clean_environment
from mlflow.tracking import MlflowClient

import tracelet


def test_pytorch_lightning_integration(run_example: Callable[..., ExampleRun]) -> None:
    example = run_example("pytorch_lightning_integration", "pytorch_lightning")
    assert example.run.info.run_name == "lightning_integration"
    written = example.tensorboard("lightning_logs")
    assert {directory for directory, _ in written} == {"version_0"}  # generated: no key prefix
    by_tag = {tag: points for (_, tag), points in written.items()}
    assert {"train_loss", "val_loss"} <= set(by_tag)
    assert len(by_tag["train_loss"]) == 8  # 2 epochs x 4 batches, log_every_n_steps=1
    assert example.keys() == set(by_tag)
    for tag, points in by_tag.items():
        assert_same_points(example.history(tag), points)
    assert example.run.info.status == "FINISHED"


def test_distributed_training_only_rank_zero_logs(run_example: Callable[..., ExampleRun]) -> None:
    example = run_example("distributed_training", "multi_gpu")
    # One run: rank 0's. Rank 1 never started an experiment, so nothing names a run after it.
    assert [run.info.run_name for run in example.runs] == ["distributed_training"]
    assert example.run.data.tags["distributed.rank"] == "0"
    assert example.run.data.tags["distributed.world_size"] == "2"
    written = example.tensorboard()
    assert [tag for _, tag in written] == ["train_loss"]
    (points,) = written.values()
    assert [step for step, _, _ in points] == list(range(100))
    assert example.keys() == {"train_loss"}
    assert_same_points(example.history("train_loss"), points)
    assert example.run.info.status == "FINISHED"


def test_train_script_against_the_server(run_example: Callable[..., ExampleRun]) -> None:
    arguments = {"--steps": "120", "--lr": "0.02", "--hidden": "16", "--batch-size": "32"}
    flat = [item for pair in arguments.items() for item in pair]
    example = run_example("train", "tracelet-examples", *flat, "--exp-name", "train-server")
    assert example.run.info.run_name == "train-server"
    written = {tag: points for (_, tag), points in example.tensorboard().items()}
    assert set(written) == {"train/loss", "train/accuracy", "lr", "val/loss", "val/accuracy"}
    assert len(written["train/loss"]) == 120
    assert example.keys() == set(written)
    for key, points in written.items():
        assert_same_points(example.history(key), points)
    assert example.run.data.params == {name[2:].replace("-", "_"): value for name, value in arguments.items()}
    assert example.run.info.status == "FINISHED"
    experiment = example.client.get_experiment(example.run.info.experiment_id)
    link = f"{example.client.tracking_uri}/#/experiments/{experiment.experiment_id}?workflowType=machine_learning"
    assert f"look at it in the MLflow UI at {link}\n" in example.stdout


def test_train_script_runs_carry_their_source_and_description(run_example: Callable[..., ExampleRun]) -> None:
    """What MLflow's own client and autologging record, in the experiment tracelet created for them."""
    experiment = f"train-source-{uuid.uuid4().hex[:8]}"
    example = run_example("train", experiment, "--steps", "30", "--project", experiment)
    tags = example.run.data.tags
    assert tags["mlflow.source.name"] == str(EXAMPLES / "train.py")
    assert tags["mlflow.source.type"] == "LOCAL"
    assert tags["mlflow.user"] == example.run.info.user_id == getpass.getuser()
    assert tags["tracelet.version"] == tracelet.__version__
    (log_dir,) = {directory for directory, _tag in example.tensorboard()}
    assert tags["tensorboard.log_dir"].endswith(log_dir)
    assert tags["mlflow.note.content"] == (
        f"TensorBoard scalars of `train.py`, captured by tracelet {tracelet.__version__}.\n\n"
        f"Log dirs: `{tags['tensorboard.log_dir']}`\n\nScript: `{EXAMPLES / 'train.py'}`"
    )
    kind = example.client.get_experiment(example.run.info.experiment_id).tags.get("mlflow.experimentKind")
    assert kind == "custom_model_development"


def test_train_script_defaults_to_the_local_sqlite_store(tmp_path: Path) -> None:
    """No MLFLOW_TRACKING_URI: the run goes to ./mlflow.db and the script says how to open it."""
    environment = {k: v for k, v in clean_environment().items() if not k.startswith("MLFLOW_")}
    completed = subprocess.run(
        [sys.executable, str(EXAMPLES / "train.py"), "--steps", "60"],
        cwd=tmp_path,
        env={**environment, "OMP_NUM_THREADS": "1", "TRACELET_SPOOL_DIR": str(tmp_path / "spool")},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert f"mlflow ui --backend-store-uri {store}" in completed.stdout
    client = MlflowClient(tracking_uri=store)
    (run,) = client.search_runs([client.get_experiment_by_name("tracelet-examples").experiment_id])
    assert run.info.run_name == "train"
    link = f"http://127.0.0.1:5000/#/experiments/{run.info.experiment_id}?workflowType=machine_learning"
    assert f"then open {link}\n" in completed.stdout
    assert len(client.get_metric_history(run.info.run_id, "train/loss")) == 60
    assert run.info.status == "FINISHED"
