"""Seed example "Metric Naming Conventions": prefixed tags keep their "/" in MLflow.

The six ``add_scalar`` lines are the document's; the experiment, the writer and the values they
log are added around them so the example runs on its own.
"""

# The code below is the document's, as written (apart from what the docstring says).
# ruff: noqa
# fmt: off

import math

import tracelet
from torch.utils.tensorboard import SummaryWriter

tracelet.start_logging(exp_name="naming_conventions", project="best_practices", backend="mlflow")
writer = SummaryWriter()

for epoch in range(20):
    train_loss = 1.0 / (epoch + 1)
    train_acc = 1.0 - train_loss / 2
    val_loss = 1.1 / (epoch + 1)
    val_acc = 1.0 - val_loss / 2
    current_lr = 0.1 * 0.9**epoch
    gpu_memory = 512.0 + 16.0 * math.sin(epoch)

    # Use consistent naming patterns
    writer.add_scalar("train/loss", train_loss, epoch)
    writer.add_scalar("train/accuracy", train_acc, epoch)
    writer.add_scalar("val/loss", val_loss, epoch)
    writer.add_scalar("val/accuracy", val_acc, epoch)
    writer.add_scalar("lr/learning_rate", current_lr, epoch)
    writer.add_scalar("gpu/memory_usage", gpu_memory, epoch)

writer.close()
tracelet.stop_logging()
