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

as_root() {
    if [[ $(id -u) -eq 0 ]]; then "$@"; else sudo "$@"; fi
}

if [[ -x "$bin" ]]; then
    log "already installed: $("$bin" --version 2>/dev/null | head -n1)"
else
    command -v apt-get >/dev/null || { log "apt-get not found; install Chromium by hand"; exit 1; }
    log "apt-get update"
    as_root apt-get update -qq >&2
    log "apt-get install chromium"
    as_root env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -qq --no-install-recommends chromium fonts-liberation >&2
fi

[[ -x "$bin" ]] || { log "$bin missing after install"; exit 1; }
echo "$bin"
