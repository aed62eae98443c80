"""A small real training run that logs through TensorBoard only; tracelet delivers every point to MLflow.

    python examples/train.py                      # MLflow store: sqlite:///mlflow.db in this directory
    python examples/train.py --steps 1000 --backend mlflow,prometheus

A two-layer network learns XOR-like labels of random 2-d points. Training loss, accuracy and the
learning rate are written with ``SummaryWriter.add_scalar`` every step, validation loss and
accuracy every 25 steps; the hyperparameters with ``exp.log_params``. With no
``MLFLOW_TRACKING_URI`` (or ``TRACELET_TRACKING_URI``) MLflow's own default applies: the
``mlflow.db`` sqlite file in the working directory. The last lines printed say where to look.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import torch
from torch import nn
from torch.utils.tensorboard import SummaryWriter

import tracelet
from opentelemetry.exporter.mlflow.delivery import MlflowWriter, public_uri


def xor_points(count: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    points = torch.randn(count, 2, generator=generator)
    return points, (points[:, 0] * points[:, 1] > 0).long()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--exp-name", default="train", help="the MLflow run name")
    parser.add_argument("--project", default="tracelet-examples", help="the MLflow experiment")
    parser.add_argument("--backend", default=None, help="mlflow, otlp, prometheus, console; comma-separated")
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--hidden", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    torch.set_num_threads(1)  # a tiny model: more threads only wait for each other
    exp = tracelet.start_logging(exp_name=args.exp_name, project=args.project, backend=args.backend)
    exp.log_params({"lr": args.lr, "hidden": args.hidden, "batch_size": args.batch_size, "steps": args.steps})

    generator = torch.Generator().manual_seed(args.seed)
    torch.manual_seed(args.seed)
    train_x, train_y = xor_points(4096, generator)
    val_x, val_y = xor_points(1024, generator)
    model = nn.Sequential(nn.Linear(2, args.hidden), nn.ReLU(), nn.Linear(args.hidden, 2))
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=args.steps)
    criterion = nn.CrossEntropyLoss()

    writer = SummaryWriter()
    for step in range(args.steps):
        batch = torch.randint(0, len(train_x), (args.batch_size,), generator=generator)
        logits = model(train_x[batch])
        loss = criterion(logits, train_y[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

        writer.add_scalar("train/loss", loss.item(), step)
        writer.add_scalar("train/accuracy", (logits.argmax(1) == train_y[batch]).float().mean().item(), step)
        writer.add_scalar("lr", schedule.get_last_lr()[0], step)
        schedule.step()

        if step % 25 == 0 or step == args.steps - 1:
            with torch.no_grad():
                val_logits = model(val_x)
            writer.add_scalar("val/loss", criterion(val_logits, val_y).item(), step)
            writer.add_scalar("val/accuracy", (val_logits.argmax(1) == val_y).float().mean().item(), step)

    writer.close()
    tracelet.stop_logging()

    backends = ", ".join(exp.settings.backend)
    print(f"logged {args.steps} steps of run {exp.name!r} (experiment {exp.project!r}) to {backends}")
    uri = exp.tracking_uri
    if uri and uri.startswith("sqlite:"):
        # The venv's mlflow, unless the one on PATH is that one: scripts/main.sh does not activate it.
        mlflow = Path(sys.executable).with_name("mlflow")
        command = "mlflow" if shutil.which("mlflow") == str(mlflow) else str(mlflow)
        print(f"look at it with: {command} ui --backend-store-uri {uri}")
        print(f"then open {runs_page('http://127.0.0.1:5000', uri, exp.project)}")
    elif uri:
        print(f"look at it in the MLflow UI at {runs_page(public_uri(uri), uri, exp.project)}")
    return 0


def runs_page(ui: str, tracking_uri: str, experiment: str | None) -> str:
    """The experiment's page in MLflow's UI, on its training runs.

    MLflow 3's UI opens an experiment on the view its sidebar switch (GenAI / Model training)
    is set to in this browser, GenAI until switched; ``workflowType=machine_learning`` opens it
    on its runs whatever the switch says.
    """
    experiment_id = MlflowWriter(tracking_uri).find_experiment(experiment) if experiment else None
    if experiment_id is None:
        return ui
    return f"{ui.rstrip('/')}/#/experiments/{experiment_id}?workflowType=machine_learning"


if __name__ == "__main__":
    raise SystemExit(main())
