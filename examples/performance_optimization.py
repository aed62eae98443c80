"""Seed example "Performance Optimization": log every 10th epoch of a long run."""

# The code below is the document's, as written (apart from what the docstring says).
# ruff: noqa
# fmt: off

# Batch metric logging for better performance
import tracelet
from torch.utils.tensorboard import SummaryWriter

tracelet.start_logging(
    exp_name="optimized_logging",
    project="performance",
    backend="mlflow"
)

writer = SummaryWriter()

# Log metrics less frequently for long training runs
log_interval = 10  # Log every 10 epochs

for epoch in range(1000):
    # Training code...
    train_loss = 1.0 / (epoch + 1)

    if epoch % log_interval == 0:
        writer.add_scalar("train_loss", train_loss, epoch)
        # Also log accumulated metrics
        writer.add_scalar("avg_loss_10_epochs", train_loss, epoch)

writer.close()
tracelet.stop_logging()
