"""The experiment and the OpenTelemetry pipeline behind it."""
