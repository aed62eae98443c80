"""tracelet: every number a training script logs through TensorBoard, in MLflow, Prometheus or any OTLP backend."""

__version__ = "0.1.0"

from tracelet.api import get_active_experiment, start_logging, stop_logging
from tracelet.core.experiment import Experiment
from tracelet.settings import TraceletSettings

__all__ = ["Experiment", "TraceletSettings", "get_active_experiment", "start_logging", "stop_logging"]
