"""``python -m opentelemetry.exporter.mlflow upload``: the exporter's command (see :mod:`.command`)."""

import sys

from opentelemetry.exporter.mlflow.command import main

if __name__ == "__main__":
    sys.exit(main())
