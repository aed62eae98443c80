"""Seed example "Enhanced Metric Logging": metric type and metadata become MLflow run tags."""

# The code below is the document's, as written (apart from what the docstring says).
# ruff: noqa
# fmt: off

import tracelet

# Start experiment
exp = tracelet.start_logging(
    exp_name="enhanced_metrics",
    project="advanced_pytorch",
    backend="mlflow"
)

# Get framework for enhanced logging
pytorch_framework = exp._frameworks["pytorch"]

# Log enhanced metrics with metadata
pytorch_framework.log_enhanced_metric(
    name="validation_accuracy",
    value=0.95,
    metric_type="accuracy",
    iteration=100,
    metadata={
        "dataset": "validation",
        "model_checkpoint": "epoch_100",
        "data_split": "val"
    }
)

pytorch_framework.log_enhanced_metric(
    name="training_loss",
    value=0.1,
    metric_type="loss",
    iteration=100,
    metadata={
        "optimizer": "adam",
        "learning_rate": 0.001,
        "batch_size": 32
    }
)
