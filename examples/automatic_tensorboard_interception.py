"""Seed example "Automatic TensorBoard Interception": SummaryWriter calls reach MLflow unchanged."""

# The code below is the document's, as written (apart from what the docstring says).
# ruff: noqa
# fmt: off

import torch
import torch.nn as nn
from torch.utils.tensorboard import SummaryWriter
import tracelet

# Start experiment with PyTorch framework
tracelet.start_logging(
    exp_name="pytorch_auto_demo",
    project="pytorch_examples",
    backend="mlflow"
)

# Use TensorBoard as normal - metrics automatically captured!
writer = SummaryWriter()

# Training loop
model = nn.Linear(10, 1)
optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
criterion = nn.MSELoss()

for epoch in range(100):
    # Synthetic training step
    data = torch.randn(32, 10)
    target = torch.randn(32, 1)

    optimizer.zero_grad()
    output = model(data)
    loss = criterion(output, target)
    loss.backward()
    optimizer.step()

    # This gets automatically sent to MLflow!
    writer.add_scalar('Loss/Train', loss.item(), epoch)
    writer.add_scalar('Learning_Rate', optimizer.param_groups[0]['lr'], epoch)

writer.close()
tracelet.stop_logging()
