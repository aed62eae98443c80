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

# shellcheck source=apt-install.sh
source "$(dirname "${BASH_SOURCE[0]}")/apt-install.sh"

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
    apt_install install-postgresql postgresql
    bin="$(server_bin)"
    [[ -n "$bin" ]] || { log "no /usr/lib/postgresql/<version>/bin/postgres after install"; exit 1; }
    log "installed: $("$bin/postgres" --version)"
fi

# Should the package's own cluster be running anyway, stop it through the package's tools.
if command -v pg_lsclusters >/dev/null && pg_lsclusters -h 2>/dev/null | awk '{print $4}' | grep -qx online; then
    stop_service install-postgresql postgresql
fi

id postgres >/dev/null 2>&1 || log "warning: no 'postgres' user; as root, tests cannot start a server"
echo "$bin"
