"""Framework integrations: how training code's own logging reaches an experiment."""

from tracelet.frameworks.pytorch import PyTorchFramework

__all__ = ["PyTorchFramework"]
