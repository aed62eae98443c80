"""tracelet: every number a training script logs through TensorBoard, in MLflow, Prometheus or any OTLP backend."""

from tracelet._version import __version__
from tracelet.api import get_active_experiment, start_logging, stop_logging
from tracelet.core.experiment import Experiment
from tracelet.settings import TraceletSettings

__all__ = [
    "Experiment",
    "TraceletSettings",
    "__version__",
    "get_active_experiment",
    "start_logging",
    "stop_logging",
]
