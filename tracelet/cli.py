"""The ``tracelet`` command: send a spool left by an offline run, receive OTLP for MLflow, import TensorBoard logs."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path


def _whole(low: int, high: int | None = None):
    """An argparse type: a whole number from ``low`` to ``high``, refused in one line otherwise."""

    def parse(text: str) -> int:
        try:
            number = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
        if number < low or (high is not None and number > high):
            span = f"between {low} and {high}" if high is not None else f"at least {low}"
            raise argparse.ArgumentTypeError(f"must be {span}, got {number}")
        return number

    return parse


def main(argv: list[str] | None = None) -> int:
    """Runs a command; a user's mistake (bad address, unreadable URI) exits 2 with one line, Ctrl-C exits 130."""
    try:
        return _main(argv)
    except KeyboardInterrupt:
        print("tracelet: interrupted", file=sys.stderr)
        return 130
    except (ValueError, OSError) as exc:  # what the user can fix: no traceback
        print(f"tracelet: error: {exc}", file=sys.stderr)
        return 2


def _main(argv: list[str] | None) -> int:
    parser = argparse.ArgumentParser(prog="tracelet", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    upload = commands.add_parser("upload", help="send spooled points to MLflow, then remove them")
    upload.add_argument("--spool-dir", type=Path, default=None, help="spool directory (default: the exporter's)")
    upload.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default: MLFLOW_TRACKING_URI)")

    receive = commands.add_parser("receive", help="OTLP/HTTP receiver that writes metrics into MLflow")
    receive.add_argument("--host", default="127.0.0.1")
    receive.add_argument("--port", type=_whole(0, 65535), default=4319)
    receive.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default: MLFLOW_TRACKING_URI)")
    receive.add_argument("--experiment", default=None, help="experiment for points whose resource names none")
    receive.add_argument(
        "--token", default=None, help="require 'Authorization: Bearer TOKEN' (or TRACELET_RECEIVER_TOKEN)"
    )
    receive.add_argument("--max-body", type=_whole(1), default=32 * 1024 * 1024, help="largest request body in bytes")
    receive.add_argument(
        "--silence",
        type=_whole(0),
        default=3600,
        help="seconds without points after which a run whose job vanished is ended KILLED (0: never)",
    )
    receive.add_argument("--tls-cert", type=Path, default=None, help="serve HTTPS with this PEM certificate (chain)")
    receive.add_argument(
        "--tls-key", type=Path, default=None, help="the certificate's PEM private key (if not in the --tls-cert file)"
    )

    imports = commands.add_parser(
        "import",
        help="import TensorBoard log directories into MLflow runs (only the points they lack)",
        description="Every scalar and hparam of the TensorBoard runs under LOGDIR, one MLflow run per log dir; "
        "points a run already holds are not sent again.",
    )
    imports.add_argument("logdirs", nargs="+", metavar="LOGDIR", help="a TensorBoard log directory (searched below)")
    imports.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default: MLFLOW_TRACKING_URI)")
    imports.add_argument("--experiment", default=None, help="MLflow experiment (default: MLFLOW_EXPERIMENT_NAME)")
    imports.add_argument(
        "--otlp", default=None, metavar="URL", help="send to this OTLP/HTTP endpoint instead of MLflow"
    )

    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.command == "import":
        from tracelet.tensorboard_import import run_import  # noqa: PLC0415

        return run_import(args.logdirs, args.tracking_uri, args.experiment, args.otlp)
    if args.command == "upload":
        from opentelemetry.exporter.mlflow.spool import upload_spool  # noqa: PLC0415

        return upload_spool(args.spool_dir, args.tracking_uri, command="tracelet upload")
    from tracelet.receiver import serve  # noqa: PLC0415

    return serve(
        host=args.host,
        port=args.port,
        tracking_uri=args.tracking_uri,
        experiment=args.experiment,
        token=args.token,
        max_body=args.max_body,
        silence=args.silence,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
    )


if __name__ == "__main__":
    sys.exit(main())
