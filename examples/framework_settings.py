"""Seed example "Framework Settings": a TraceletSettings object passed to start_logging (``import tracelet`` added)."""

# The code below is the document's, as written (apart from what the docstring says).
# ruff: noqa
# fmt: off

import tracelet
from tracelet.settings import TraceletSettings

# Configure PyTorch framework behavior
settings = TraceletSettings(
    project="pytorch_config",
    backend=["mlflow"],
    # Framework-specific settings would go here if supported
)

tracelet.start_logging(
    exp_name="configured_pytorch",
    settings=settings
)
