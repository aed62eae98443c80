"""OpenTelemetry metrics exporter for MLflow (delivery is being assembled; see mapping.py)."""
