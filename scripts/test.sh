#!/usr/bin/env bash
# The whole test suite on a fresh machine: Python packages, the pinned OpenTelemetry Collector
# (built once and cached outside the repository), Debian's Prometheus, PostgreSQL (the route
# against an mlflow server on PostgreSQL) and Chromium (the test that looks at runs in MLflow's
# web UI), then lint, the SDK compatibility tests against the lowest
# and the newest supported opentelemetry-sdk (scripts/test-sdk-versions.sh, whole-suite runs only:
# with arguments, only what they name runs) and pytest.
# Every server the tests use (mlflow server, PostgreSQL, collector, Prometheus, tracelet's receiver) is
# started by the tests themselves on 127.0.0.1 and stopped by its PID.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
python="$(scripts/setup.sh | tail -n 1)"
scripts/build-collector.sh >/dev/null
scripts/install-prometheus.sh >/dev/null
scripts/install-postgresql.sh >/dev/null
scripts/install-chromium.sh >/dev/null
bin="$(dirname "$python")"
"$bin/ruff" check .
"$bin/ruff" format --check .
if [[ $# -eq 0 ]]; then
    scripts/test-sdk-versions.sh "$python"
fi
exec "$python" -m pytest "$@"
