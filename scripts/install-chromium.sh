#!/usr/bin/env bash
# Install Debian's Chromium, for the test that looks at tracelet's runs in MLflow's web UI.
#
#   scripts/install-chromium.sh     -> prints the binary path as the last stdout line
#
# Idempotent: does nothing if /usr/bin/chromium is already there. The tests drive it headless
# (no display, no sandbox as root, no background networking) against an mlflow server on 127.0.0.1.
# Needs root (or sudo) and apt-get; everything except the path goes to stderr.
set -euo pipefail

bin=/usr/bin/chromium

log() { echo "install-chromium: $*" >&2; }

# shellcheck source=apt-install.sh
source "$(dirname "${BASH_SOURCE[0]}")/apt-install.sh"

if [[ -x "$bin" ]]; then
    log "already installed: $("$bin" --version 2>/dev/null | head -n1)"
else
    apt_install install-chromium chromium fonts-liberation
fi

[[ -x "$bin" ]] || { log "$bin missing after install"; exit 1; }
echo "$bin"
