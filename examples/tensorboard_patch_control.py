"""Seed example "TensorBoard Patch Control": a framework that logs directly, never patching TensorBoard.

As in the document, with ``import tracelet`` added.
"""

# The code below is the document's, as written (apart from what the docstring says).
# ruff: noqa
# fmt: off

import tracelet

# Disable TensorBoard patching
from tracelet.frameworks.pytorch import PyTorchFramework

framework = PyTorchFramework(patch_tensorboard=False)

# Manual metric logging only
exp = tracelet.start_logging(
    exp_name="manual_only",
    project="no_tensorboard",
    backend="mlflow"
)

# Log metrics directly through framework
framework.initialize(exp)
framework.log_metric("manual_metric", 0.5, iteration=1)
