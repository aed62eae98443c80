"""Real training libraries' own TensorBoard paths, run unchanged under ``opentelemetry-instrument``.

Each script is what a user of that library writes (tiny models built from configs, synthetic
data, nothing downloaded). It runs in its own process with zero-code capture into the session's
``mlflow server``; afterwards every series in the event files the run wrote is compared with
MLflow point by point: key, step, value (TensorBoard keeps float32), wall time floored to the ms.
"""

from __future__ import annotations

import math
import subprocess
import sys
import textwrap
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from support.env import subprocess_env
from tbparse import SummaryReader

INSTRUMENT = str(Path(sys.executable).with_name("opentelemetry-instrument"))

Series = dict[tuple[str, str], list[tuple[int, float, int]]]  # (dir, tag) -> (step, value, ms)


def event_series(root: Path) -> Series:
    """Every scalar under ``root`` as TensorBoard wrote it, by (log dir relative to root, tag)."""
    frame = SummaryReader(str(root), pivot=False, extra_columns={"dir_name", "wall_time"}).scalars
    series: Series = {}
    for row in frame.itertuples():
        ms = math.floor(Fraction(float(row.wall_time)) * 1000)
        series.setdefault((row.dir_name, row.tag), []).append((int(row.step), float(row.value), ms))
    return {key: sorted(points, key=lambda p: (p[0], p[2])) for key, points in series.items()}


def same32(stored: float, written: float) -> bool:
    if math.isnan(written):
        return math.isnan(stored)
    return np.float32(stored) == np.float32(written)


class Library:
    """One library's script, run and read back."""

    def __init__(self, mlflow_uri: str, tmp_path: Path, name: str) -> None:
        self.client = MlflowClient(mlflow_uri)
        self.cwd = tmp_path
        self.experiment = f"library-{name}-{tmp_path.name}"
        self.uri = mlflow_uri

    def run(self, script: str, **env: str) -> None:
        (self.cwd / "train.py").write_text(textwrap.dedent(script))
        self.started_ms = int(time.time() * 1000)
        done = subprocess.run(
            [INSTRUMENT, sys.executable, "train.py"],
            cwd=self.cwd,
            env=subprocess_env(
                OTEL_METRICS_EXPORTER="mlflow",
                MLFLOW_TRACKING_URI=self.uri,
                MLFLOW_EXPERIMENT_NAME=self.experiment,
                TRACELET_SPOOL_DIR=str(self.cwd / "spool"),
                HF_HUB_OFFLINE="1",
                TRANSFORMERS_OFFLINE="1",
                HF_DATASETS_OFFLINE="1",
                OMP_NUM_THREADS="1",
                TOKENIZERS_PARALLELISM="false",
                **env,
            ),
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        assert done.returncode == 0, done.stderr[-6000:]
        self.stdout, self.stderr = done.stdout, done.stderr
        experiment = self.client.get_experiment_by_name(self.experiment)
        (self.mlflow_run,) = self.client.search_runs([experiment.experiment_id])

    def compare(self, log_root: str, keys: dict[tuple[str, str], str]) -> tuple[int, int]:
        """Asserts MLflow holds exactly the event files' points under ``keys``; returns both counts."""
        written = event_series(self.cwd / log_root)
        assert set(written) == set(keys), "the event files hold other series than expected"
        run_id = self.mlflow_run.info.run_id
        assert set(self.mlflow_run.data.metrics) == set(keys.values())
        in_mlflow = 0
        for series, key in keys.items():
            history = sorted(
                ((m.step, m.value, m.timestamp) for m in self.client.get_metric_history(run_id, key)),
                key=lambda p: (p[0], p[2]),
            )
            expected = written[series]
            assert [(s, ms) for s, _, ms in history] == [(s, ms) for s, _, ms in expected], key
            assert all(same32(got[1], want[1]) for got, want in zip(history, expected, strict=True)), key
            in_mlflow += len(history)
        total = sum(len(points) for points in written.values())
        print(f"{self.experiment}: {total} points in the event files, {in_mlflow} in MLflow")
        assert in_mlflow == total
        assert self.mlflow_run.info.status == "FINISHED"
        assert "Traceback" not in self.stderr
        return total, in_mlflow


@pytest.fixture
def library(mlflow_server, tmp_path: Path, request: pytest.FixtureRequest) -> Library:
    return Library(mlflow_server.uri, tmp_path, request.node.name.removeprefix("test_").split("_")[0])


LIGHTNING = """
    import torch
    import pytorch_lightning as pl
    from pytorch_lightning.loggers import TensorBoardLogger

    torch.manual_seed(0)


    class Regressor(pl.LightningModule):
        def __init__(self, lr=0.05, hidden=8):
            super().__init__()
            self.save_hyperparameters()
            self.net = torch.nn.Sequential(torch.nn.Linear(4, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 1))

        def training_step(self, batch, index):
            x, y = batch
            out = self.net(x)
            loss = torch.nn.functional.mse_loss(out, y)
            self.log("train_loss", loss)
            self.log("train/abs_err", (out - y).abs().mean(), on_step=True, on_epoch=True)
            return loss

        def validation_step(self, batch, index):
            x, y = batch
            self.log("val_loss", torch.nn.functional.mse_loss(self.net(x), y))

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)


    data = torch.utils.data.TensorDataset(torch.randn(64, 4), torch.randn(64, 1))
    loader = torch.utils.data.DataLoader(data, batch_size=8)
    trainer = pl.Trainer(
        max_epochs=3, logger=TensorBoardLogger("tb_logs", name="regressor"), log_every_n_steps=1,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, accelerator="cpu",
    )
    trainer.fit(Regressor(), loader, loader)
"""


def test_lightning_tensorboard_logger(library: Library) -> None:
    library.run(LIGHTNING)
    tags = ["train_loss", "train/abs_err_step", "train/abs_err_epoch", "val_loss", "epoch", "hp_metric"]
    library.compare("tb_logs", {("regressor/version_0", tag): tag for tag in tags})
    assert library.mlflow_run.data.params == {"lr": "0.05", "hidden": "8"}
    assert library.mlflow_run.data.tags["tensorboard.log_dir"] == "tb_logs/regressor/version_0"


TRANSFORMERS = """
    import torch
    from transformers import BertConfig, BertForSequenceClassification, Trainer, TrainingArguments

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
        max_position_embeddings=16, num_labels=2,
    )


    class Synthetic(torch.utils.data.Dataset):
        def __init__(self, size, seed):
            generator = torch.Generator().manual_seed(seed)
            self.ids = torch.randint(0, 64, (size, 8), generator=generator)
            self.labels = torch.randint(0, 2, (size,), generator=generator)

        def __len__(self):
            return len(self.labels)

        def __getitem__(self, i):
            mask = torch.ones(8, dtype=torch.long)
            return {"input_ids": self.ids[i], "attention_mask": mask, "labels": self.labels[i]}


    args = TrainingArguments(
        output_dir="out", report_to="tensorboard", logging_steps=1, max_steps=8, eval_strategy="steps",
        eval_steps=4, per_device_train_batch_size=4, per_device_eval_batch_size=8, save_strategy="no",
        use_cpu=True, disable_tqdm=True, learning_rate=1e-3,
    )
    Trainer(model=BertForSequenceClassification(config), args=args, train_dataset=Synthetic(32, 1),
            eval_dataset=Synthetic(16, 2)).train()
"""


def test_transformers_trainer_report_to_tensorboard(library: Library) -> None:
    library.run(TRANSFORMERS)
    written = event_series(library.cwd / "out")
    (log_dir,) = {directory for directory, _tag in written}
    assert log_dir.startswith("runs/")  # transformers' own runs/<date>_<host>: names the run, not a key prefix
    tags = {tag for _directory, tag in written}
    assert {"train/loss", "train/learning_rate", "train/grad_norm", "eval/loss", "train/train_runtime"} <= tags
    library.compare("out", {(log_dir, tag): tag for tag in tags})
    assert library.mlflow_run.data.tags["tensorboard.log_dir"] == f"out/{log_dir}"


ACCELERATE = """
    from accelerate import Accelerator

    accelerator = Accelerator(log_with="tensorboard", project_dir="tb", cpu=True)
    accelerator.init_trackers("accel_run", config={"lr": 0.1, "epochs": 3})
    for step in range(12):
        accelerator.log(
            {"loss": 1 / (step + 1), "lr": 0.1 * 0.9**step, "pair": {"a": step * 1.5, "b": -step * 0.25}}, step=step
        )
    accelerator.end_training()
"""


def test_accelerate_log_with_tensorboard(library: Library) -> None:
    library.run(ACCELERATE)
    library.compare(
        "tb",
        {
            ("accel_run", "loss"): "accel_run/loss",
            ("accel_run", "lr"): "accel_run/lr",
            ("accel_run/pair_a", "pair"): "accel_run/pair/a",  # add_scalars: one writer per key
            ("accel_run/pair_b", "pair"): "accel_run/pair/b",
        },
    )
    assert library.mlflow_run.data.params == {"lr": "0.1", "epochs": "3"}


IGNITE = """
    import torch
    from ignite.engine import Events, create_supervised_evaluator, create_supervised_trainer
    from ignite.handlers.tensorboard_logger import TensorboardLogger, global_step_from_engine
    from ignite.metrics import Loss, MeanAbsoluteError

    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    criterion = torch.nn.MSELoss()
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(torch.randn(64, 4), torch.randn(64, 1)), batch_size=8
    )
    trainer = create_supervised_trainer(model, optimizer, criterion)
    evaluator = create_supervised_evaluator(model, metrics={"mse": Loss(criterion), "mae": MeanAbsoluteError()})
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda engine: evaluator.run(loader))

    tb_logger = TensorboardLogger(log_dir="tb-ignite")
    tb_logger.attach_output_handler(
        trainer, event_name=Events.ITERATION_COMPLETED, tag="training",
        output_transform=lambda loss: {"batch loss": loss},
    )
    tb_logger.attach_opt_params_handler(trainer, event_name=Events.ITERATION_STARTED, optimizer=optimizer)
    tb_logger.attach_output_handler(
        evaluator, event_name=Events.EPOCH_COMPLETED, tag="validation", metric_names="all",
        global_step_transform=global_step_from_engine(trainer),
    )
    trainer.run(loader, max_epochs=3)
    tb_logger.close()
    print(type(tb_logger.writer).__module__)
"""


def test_ignite_tensorboard_logger(library: Library) -> None:
    library.run(IGNITE)
    assert library.stdout.split() == ["tensorboardX.writer"]  # ignite prefers tensorboardX
    # tensorboardX cleans "batch loss" to "batch_loss"; MLflow shows the tag TensorBoard shows.
    library.compare(
        "tb-ignite",
        {
            ("", "training/batch_loss"): "tb-ignite/training/batch_loss",
            ("", "lr/group_0"): "tb-ignite/lr/group_0",
            ("", "validation/mse"): "tb-ignite/validation/mse",
            ("", "validation/mae"): "tb-ignite/validation/mae",
        },
    )


GYMNASIUM = """
    import time

    import gymnasium as gym
    import numpy as np
    from torch.utils.tensorboard import SummaryWriter

    run_name = f"CartPole-v1__ppo__1__{int(time.time())}"
    writer = SummaryWriter(f"runs/{run_name}")
    writer.add_scalar("replayed/old_point", 1.0, 0, walltime=1_000_000_000.0)  # an old wall time
    envs = gym.vector.SyncVectorEnv([lambda: gym.wrappers.RecordEpisodeStatistics(gym.make("CartPole-v1"))])
    envs.reset(seed=1)
    rng = np.random.default_rng(1)
    episodes = 0
    for global_step in range(2_000):
        _obs, _reward, _terminated, _truncated, infos = envs.step(rng.integers(0, 2, size=1))
        if "episode" in infos:
            episodes += 1
            writer.add_scalar("charts/episodic_return", infos["episode"]["r"], global_step)  # shape (1,)
            writer.add_scalar("charts/episodic_length", infos["episode"]["l"][0], global_step)  # numpy int
    assert episodes > 20, episodes
    writer.close()
    envs.close()
"""


def test_gymnasium_episode_statistics(library: Library) -> None:
    library.run(GYMNASIUM)
    written = event_series(library.cwd / "runs")
    (log_dir,) = {directory for directory, _tag in written}
    assert log_dir.startswith("CartPole-v1__ppo__1__")
    total, _ = library.compare("runs", {(log_dir, tag): tag for _directory, tag in written})
    assert total > 40
    info = library.mlflow_run.info
    # The run starts when the process started tracking, not at its oldest point's wall time.
    assert library.started_ms <= info.start_time <= int(time.time() * 1000)
    assert library.mlflow_run.data.tags["tensorboard.log_dir"] == f"runs/{log_dir}"
