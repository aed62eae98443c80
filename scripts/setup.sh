#!/usr/bin/env bash
# Set up everything tracelet needs on a fresh machine: a Python virtualenv with the three
# packages of this repository (editable) and their dependencies. Idempotent and quick when
# nothing changed. Prints the venv's python as the last stdout line.
#
#   TRACELET_CACHE   cache root for the venv and builds (default: $HOME/.cache/tracelet)
#   TRACELET_VENV    the virtualenv (default: $TRACELET_CACHE/venv)
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache="${TRACELET_CACHE:-$HOME/.cache/tracelet}"
venv="${TRACELET_VENV:-$cache/venv}"
python="${PYTHON:-python3}"

log() { echo "setup: $*" >&2; }

if [[ ! -x "$venv/bin/python" ]]; then
    log "creating $venv"
    mkdir -p "$(dirname "$venv")"
    "$python" -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --upgrade pip >&2
fi

# The requirements' hash decides whether pip needs to resolve again; the editable links are
# refreshed every time so the venv always points at this checkout.
stamp="$venv/.tracelet-requirements"
want="$(cat "$root/pyproject.toml" "$root"/instrumentation/*/pyproject.toml "$root"/exporters/*/pyproject.toml | sha256sum | cut -c1-16)"
editables=(-e "$root/instrumentation/opentelemetry-instrumentation-tensorboard"
           -e "$root/exporters/opentelemetry-exporter-mlflow"
           -e "$root[torch,lightning,test]")
if [[ "$(cat "$stamp" 2>/dev/null)" != "$want" ]]; then
    log "installing Python packages (torch is large: the first time takes several minutes)"
    "$venv/bin/python" -m pip install --quiet "${editables[@]}" >&2
    echo "$want" > "$stamp"
else
    "$venv/bin/python" -m pip install --quiet --no-deps "${editables[@]}" >&2
fi
echo "$venv/bin/python"
