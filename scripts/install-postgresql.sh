#!/usr/bin/env bash
# Install the PostgreSQL server from Debian's package, for tests and local use.
#
#   scripts/install-postgresql.sh     -> prints the server's bin directory as the last stdout line
#                                        (/usr/lib/postgresql/<version>/bin, holding initdb and postgres)
#
# Idempotent: does nothing if a server is already installed. The package's own cluster service
# is kept from starting (tests run their own cluster under a temporary directory, on a free
# loopback port), and stopped if it was started anyway. The package creates the `postgres`
# user, which the tests run the server as when they run as root (PostgreSQL refuses root).
# Needs root (or sudo) and apt-get; everything except the path goes to stderr.
set -euo pipefail

log() { echo "install-postgresql: $*" >&2; }

as_root() {
    if [[ $(id -u) -eq 0 ]]; then "$@"; else sudo "$@"; fi
}

# The newest installed server version's bin directory, or nothing.
server_bin() {
    local dir
    dir="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)"
    if [[ -n "$dir" && -x "$dir/postgres" && -x "$dir/initdb" ]]; then echo "$dir"; fi
}

bin="$(server_bin)"
if [[ -n "$bin" ]]; then
    log "already installed: $("$bin/postgres" --version)"
else
    command -v apt-get >/dev/null || { log "apt-get not found; install PostgreSQL by hand"; exit 1; }

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
    log "apt-get install postgresql"
    as_root env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -qq --no-install-recommends postgresql >&2

    if [[ $added_policy -eq 1 ]]; then
        as_root rm -f "$policy"
        trap - EXIT
    fi
    bin="$(server_bin)"
    [[ -n "$bin" ]] || { log "no /usr/lib/postgresql/<version>/bin/postgres after install"; exit 1; }
    log "installed: $("$bin/postgres" --version)"
fi

# Should the package's own cluster be running anyway, stop it through the package's tools.
if command -v pg_lsclusters >/dev/null && pg_lsclusters -h 2>/dev/null | awk '{print $4}' | grep -qx online; then
    if [[ -d /run/systemd/system ]] && command -v systemctl >/dev/null; then
        log "stopping the postgresql service (systemd)"
        as_root systemctl stop postgresql >&2 || true
        as_root systemctl disable postgresql >&2 || true
    elif [[ -x /etc/init.d/postgresql ]]; then
        log "stopping the postgresql service (init script)"
        as_root /etc/init.d/postgresql stop >&2 || true
    fi
fi

id postgres >/dev/null 2>&1 || log "warning: no 'postgres' user; as root, tests cannot start a server"
echo "$bin"
