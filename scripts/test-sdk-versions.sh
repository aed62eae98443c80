#!/usr/bin/env bash
# The SDK compat tests and the capture tests against the lowest and the newest supported
# opentelemetry-sdk (opentelemetry.instrumentation.tensorboard._sdk_compat.SUPPORTED).
#
# A whole virtualenv per version would mean installing torch again; instead, only the
# OpenTelemetry packages the instrumentation imports (api, sdk, semantic conventions,
# instrumentation, and the OTLP/HTTP exporter whose resolved endpoint _sdk_compat reads) are
# installed at that version into a directory of their own (cached under
# $TRACELET_CACHE/otel-sdk/<version>), which goes first on PYTHONPATH for these tests alone;
# everything else comes from the project's venv. Each run first checks that the SDK it imports
# is that version, from that directory.
#
#   scripts/test-sdk-versions.sh [python]    (default: the venv scripts/setup.sh makes)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
python="${1:-$(scripts/setup.sh | tail -n 1)}"
cache="${TRACELET_CACHE:-$HOME/.cache/tracelet}/otel-sdk"
read -r -a versions < <("$python" -c \
    "from opentelemetry.instrumentation.tensorboard._sdk_compat import SUPPORTED; print(*SUPPORTED)")

for version in "${versions[@]}"; do
    target="$cache/$version"
    recipe="api sdk semantic-conventions instrumentation exporter-otlp-proto-http exporter-otlp-proto-common"
    if [[ "$(cat "$target/.complete" 2>/dev/null)" != "$recipe" ]]; then
        rm -rf "$target"
        # The contrib release that goes with this SDK is the one sharing its semantic conventions
        # (read from the SDK's metadata); all four go in one install, into one opentelemetry/ tree.
        semconv="$("$python" -m pip install --dry-run --quiet --no-deps --ignore-installed \
            --disable-pip-version-check --report - "opentelemetry-sdk==$version" | "$python" -c '
import json, sys
(sdk,) = json.load(sys.stdin)["install"]
(pin,) = [r for r in sdk["metadata"]["requires_dist"] if r.startswith("opentelemetry-semantic-conventions")]
print(pin.split("==")[1].split(";")[0].strip())')"
        "$python" -m pip install --quiet --disable-pip-version-check --no-deps --target "$target" \
            "opentelemetry-api==$version" "opentelemetry-sdk==$version" \
            "opentelemetry-semantic-conventions==$semconv" "opentelemetry-instrumentation==$semconv" \
            "opentelemetry-exporter-otlp-proto-http==$version" "opentelemetry-exporter-otlp-proto-common==$version" >&2
        echo "$recipe" > "$target/.complete"
    fi
    echo "opentelemetry-sdk $version:"
    PYTHONPATH="$target${PYTHONPATH:+:$PYTHONPATH}" "$python" - "$version" "$target" <<'EOF'
import sys
from pathlib import Path

import opentelemetry.exporter.otlp.proto.http.metric_exporter
import opentelemetry.instrumentation.instrumentor
import opentelemetry.metrics
import opentelemetry.sdk.metrics
import opentelemetry.semconv.resource
from opentelemetry.sdk.version import __version__

version, target = sys.argv[1], Path(sys.argv[2]).resolve()
if __version__ != version:
    sys.exit(f"expected opentelemetry-sdk {version}, imported {__version__}")
for module in (opentelemetry.metrics, opentelemetry.sdk.metrics, opentelemetry.semconv.resource,
               opentelemetry.instrumentation.instrumentor, opentelemetry.exporter.otlp.proto.http.metric_exporter):
    where = Path(module.__file__).resolve()
    if target not in where.parents:
        sys.exit(f"{module.__name__} comes from {where}, not from {target}")
EOF
    PYTHONPATH="$target${PYTHONPATH:+:$PYTHONPATH}" "$python" -m pytest -q -p no:cacheprovider \
        tests/instrumentation/test_sdk_compat.py tests/instrumentation/test_capture.py
done
