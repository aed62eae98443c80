#!/usr/bin/env bash
# Install the Prometheus server from Debian's package, for tests and local use.
#
#   scripts/install-prometheus.sh     -> prints the binary path as the last stdout line
#
# Idempotent: does nothing if /usr/bin/prometheus is already there. The
# package's own service is kept from starting (tests run their own Prometheus
# on a free loopback port), and stopped if it was started anyway.
# Needs root (or sudo) and apt-get; everything except the path goes to stderr.
set -euo pipefail

bin=/usr/bin/prometheus

log() { echo "install-prometheus: $*" >&2; }

# shellcheck source=apt-install.sh
source "$(dirname "${BASH_SOURCE[0]}")/apt-install.sh"

listening_9090() {
    command -v ss >/dev/null && ss -Hltn 'sport = :9090' 2>/dev/null | grep -q .
}

if [[ -x "$bin" ]]; then
    log "already installed: $("$bin" --version 2>&1 | head -n1)"
else
    apt_install install-prometheus prometheus
fi

# Should the package's service be running anyway, stop it through the
# package's own init script (or systemd, where it runs).
if [[ -f /run/prometheus/prometheus.pid ]] || listening_9090; then
    stop_service install-prometheus prometheus
fi
if listening_9090; then
    log "warning: something still listens on :9090 (not started by this script)"
fi

[[ -x "$bin" ]] || { log "$bin missing after install"; exit 1; }
echo "$bin"
