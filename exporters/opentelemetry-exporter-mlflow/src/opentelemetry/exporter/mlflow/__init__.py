"""OpenTelemetry metrics exporter for MLflow: every TensorBoard point, in the right run, exactly once.

``MlflowMetricExporter`` (entry point ``opentelemetry_metrics_exporter`` = ``mlflow``, so
``OTEL_METRICS_EXPORTER=mlflow opentelemetry-instrument python train.py`` works without code);
``delivery.MlflowWriter`` is the synchronous writer it shares with tracelet's OTLP receiver;
``lifecycle`` (the TensorBoard instrumentation's) tells how the process ends, for the runs' status;
``spool.upload_spool`` sends what an offline run left on disk. See the README.
"""

from opentelemetry.exporter.mlflow.exporter import MlflowMetricExporter
from opentelemetry.exporter.mlflow.version import __version__
from opentelemetry.instrumentation.tensorboard import lifecycle

__all__ = ["MlflowMetricExporter", "__version__", "lifecycle"]
