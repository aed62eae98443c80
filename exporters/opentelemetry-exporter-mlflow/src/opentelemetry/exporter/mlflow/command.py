"""The exporter's own command: ``opentelemetry-exporter-mlflow upload``, or ``python -m opentelemetry.exporter.mlflow``.

It sends what the exporter left in its spool (MLflow was down, refused the credentials, or the job
was killed) with :func:`~opentelemetry.exporter.mlflow.spool.upload_spool`, the function
``tracelet upload`` runs too, and exits 0 when nothing is left to send, 1 otherwise, 2 for a
mistake in the command line or the settings.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from opentelemetry.exporter.mlflow.environment_variables import OTEL_EXPORTER_MLFLOW_SPOOL_DIR
from opentelemetry.exporter.mlflow.spool import UPLOAD_COMMAND, upload_spool

PROGRAM = UPLOAD_COMMAND.split()[0]


def main(argv: list[str] | None = None) -> int:
    """Runs the command line ``argv`` (default: ``sys.argv[1:]``); returns the exit status."""
    parser = argparse.ArgumentParser(prog=PROGRAM, description="Sends what the MLflow exporter left in its spool.")
    commands = parser.add_subparsers(dest="command", required=True)
    upload = commands.add_parser("upload", help="send spooled points to MLflow, then remove them")
    upload.add_argument(
        "--spool-dir", type=Path, default=None, help=f"spool directory (default: {OTEL_EXPORTER_MLFLOW_SPOOL_DIR})"
    )
    upload.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default: MLFLOW_TRACKING_URI)")
    upload.add_argument(
        "--retry-for", type=float, default=60.0, help="seconds to retry while MLflow is unavailable (default 60)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return upload_spool(args.spool_dir, args.tracking_uri, retry_for=max(args.retry_for, 0.0))
    except KeyboardInterrupt:
        print(f"{PROGRAM}: interrupted", file=sys.stderr)
        return 130
    except (ValueError, OSError) as exc:  # what the user can fix: no traceback
        print(f"{PROGRAM}: error: {exc}", file=sys.stderr)
        return 2
