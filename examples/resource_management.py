"""Seed example "Resource Management": cleanup from ``finally`` and again from atexit."""

# The code below is the document's, as written (apart from what the docstring says).
# ruff: noqa
# fmt: off

import atexit
import tracelet
from torch.utils.tensorboard import SummaryWriter

# Ensure cleanup on exit
exp = tracelet.start_logging(
    exp_name="resource_managed",
    project="best_practices",
    backend="mlflow"
)

writer = SummaryWriter()

def cleanup():
    writer.close()
    tracelet.stop_logging()

atexit.register(cleanup)

try:
    # Training code here
    pass
finally:
    cleanup()
