#!/usr/bin/env bash
# The main job: set everything up, then run a small real training whose TensorBoard scalars
# land in an embedded MLflow store (sqlite) in the working directory, and say where to look.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="$("$root/scripts/setup.sh" | tail -n 1)"
exec "$python" "$root/examples/train.py" "$@"
