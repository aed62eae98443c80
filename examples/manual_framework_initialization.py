"""Seed example "Manual Framework Initialization": a second PyTorchFramework beside start_logging's own."""

# The code below is the document's, as written (apart from what the docstring says).
# ruff: noqa
# fmt: off

from tracelet.frameworks.pytorch import PyTorchFramework
from tracelet.core.experiment import Experiment
import tracelet

# Manual framework setup
exp = tracelet.start_logging(
    exp_name="manual_pytorch",
    project="framework_demo",
    backend="mlflow"
)

# Get the PyTorch framework instance
pytorch_framework = exp._frameworks.get("pytorch")  # Internal access

# Or initialize separately
framework = PyTorchFramework(patch_tensorboard=True)
framework.initialize(exp)
framework.start_tracking()
