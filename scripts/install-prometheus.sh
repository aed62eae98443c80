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

as_root() {
    if [[ $(id -u) -eq 0 ]]; then "$@"; else sudo "$@"; fi
}

listening_9090() {
    command -v ss >/dev/null && ss -Hltn 'sport = :9090' 2>/dev/null | grep -q .
}

if [[ -x "$bin" ]]; then
    log "already installed: $("$bin" --version 2>&1 | head -n1)"
else
    command -v apt-get >/dev/null || { log "apt-get not found; install Prometheus by hand"; exit 1; }

    # policy-rc.d exit code 101 tells invoke-rc.d/deb-systemd-invoke not to
    # start services during installation. Only add one if none exists.
    policy=/usr/sbin/policy-rc.d
    added_policy=0
    if [[ ! -e "$policy" ]]; then
        as_root sh -c "printf '#!/bin/sh\nexit 101\n' > $policy && chmod 0755 $policy"
        added_policy=1
        trap 'as_root rm -f "$policy"' EXIT
    fi

    log "apt-get update"
    as_root apt-get update -qq >&2
    log "apt-get install prometheus"
    as_root env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -qq --no-install-recommends prometheus >&2

    if [[ $added_policy -eq 1 ]]; then
        as_root rm -f "$policy"
        trap - EXIT
    fi
fi

# Should the package's service be running anyway, stop it through the
# package's own init script (or systemd, where it runs).
if [[ -f /run/prometheus/prometheus.pid ]] || listening_9090; then
    if [[ -d /run/systemd/system ]] && command -v systemctl >/dev/null; then
        log "stopping the prometheus service (systemd)"
        as_root systemctl stop prometheus >&2 || true
        as_root systemctl disable prometheus >&2 || true
    elif [[ -x /etc/init.d/prometheus ]]; then
        log "stopping the prometheus service (init script)"
        as_root /etc/init.d/prometheus stop >&2 || true
    fi
fi
if listening_9090; then
    log "warning: something still listens on :9090 (not started by this script)"
fi

[[ -x "$bin" ]] || { log "$bin missing after install"; exit 1; }
echo "$bin"
