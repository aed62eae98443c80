# Sourced by scripts/install-*.sh: Debian packages installed quietly, their services never started
# (apt_install), or stopped if they started anyway (stop_service).
#
#   source "$(dirname "${BASH_SOURCE[0]}")/apt-install.sh"
#   apt_install <name for messages> <package>...
#
# A package's own service (prometheus, postgresql) must not start: the tests run their own server
# on a free loopback port. policy-rc.d answering 101 tells invoke-rc.d and deb-systemd-invoke not to
# start services during the installation; one is added only if none exists, and removed after.
# Needs root (or sudo) and apt-get; everything goes to stderr.

as_root() {
    if [[ $(id -u) -eq 0 ]]; then "$@"; else sudo "$@"; fi
}

apt_install() {
    local name="$1"
    shift
    command -v apt-get >/dev/null || { echo "$name: apt-get not found; install $* by hand" >&2; return 1; }
    local policy=/usr/sbin/policy-rc.d added_policy=0
    if [[ ! -e "$policy" ]]; then
        as_root sh -c "printf '#!/bin/sh\nexit 101\n' > $policy && chmod 0755 $policy"
        added_policy=1
        trap 'as_root rm -f /usr/sbin/policy-rc.d' EXIT
    fi
    echo "$name: apt-get update" >&2
    as_root apt-get update -qq >&2
    echo "$name: apt-get install $*" >&2
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >&2
    if [[ $added_policy -eq 1 ]]; then
        as_root rm -f "$policy"
        trap - EXIT
    fi
}

# Stops (and disables) a package's own service that started anyway, through systemd or its init script.
stop_service() {
    local name="$1" service="$2"
    if [[ -d /run/systemd/system ]] && command -v systemctl >/dev/null; then
        echo "$name: stopping the $service service (systemd)" >&2
        as_root systemctl stop "$service" >&2 || true
        as_root systemctl disable "$service" >&2 || true
    elif [[ -x "/etc/init.d/$service" ]]; then
        echo "$name: stopping the $service service (init script)" >&2
        as_root "/etc/init.d/$service" stop >&2 || true
    fi
}
