"""Seed example "Multi-Writer Support": two writers' "Loss" stay apart (train/Loss, validation/Loss)."""

# The code below is the document's, as written (apart from what the docstring says).
# ruff: noqa
# fmt: off

import torch
from torch.utils.tensorboard import SummaryWriter
import tracelet

# Start experiment
tracelet.start_logging(
    exp_name="multi_writer",
    project="tensorboard_demo",
    backend="mlflow"
)

# Multiple writers - all captured automatically
train_writer = SummaryWriter(log_dir="runs/train")
val_writer = SummaryWriter(log_dir="runs/validation")

for epoch in range(50):
    # Training metrics
    train_loss = 1.0 / (epoch + 1)  # Decreasing loss
    train_writer.add_scalar("Loss", train_loss, epoch)
    train_writer.add_scalar("Accuracy", min(0.9, epoch * 0.02), epoch)

    # Validation metrics (every 5 epochs)
    if epoch % 5 == 0:
        val_loss = train_loss * 1.1
        val_writer.add_scalar("Loss", val_loss, epoch)
        val_writer.add_scalar("Accuracy", min(0.85, epoch * 0.018), epoch)

train_writer.close()
val_writer.close()
tracelet.stop_logging()
