#!/usr/bin/env bash
# Build the otelcol-tracelet collector from collector/ (pinned go.mod/go.sum)
# and cache the binary outside the repository, keyed by a hash of go.mod,
# go.sum, main.go and the Go version.
#
#   scripts/build-collector.sh        -> prints the binary path as the last stdout line
#
# Environment:
#   TRACELET_CACHE   cache root (default: $HOME/.cache/tracelet)
#   GOMODCACHE/GOCACHE are honoured if set; otherwise Go's defaults are used.
#
# Everything except the final path goes to stderr. Safe to run concurrently:
# builds are serialised with flock and land via an atomic rename.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
src="$repo_root/collector"
cache_root="${TRACELET_CACHE:-$HOME/.cache/tracelet}"

for f in go.mod go.sum main.go; do
    [[ -f "$src/$f" ]] || { echo "build-collector: missing $src/$f" >&2; exit 1; }
done
command -v go >/dev/null || { echo "build-collector: 'go' not found in PATH" >&2; exit 1; }

# The Go version is part of the key so that a toolchain upgrade rebuilds.
hash="$(cd "$src" && { cat go.mod go.sum main.go; go env GOVERSION; } | sha256sum | cut -c1-16)"
out_dir="$cache_root/otelcol/$hash"
bin="$out_dir/otelcol-tracelet"

if [[ -x "$bin" ]]; then
    echo "build-collector: using cached $bin" >&2
    echo "$bin"
    exit 0
fi

mkdir -p "$out_dir"
exec 9>"$out_dir/.lock"
if command -v flock >/dev/null; then
    flock 9
fi

# Another process may have finished the build while we waited for the lock.
if [[ -x "$bin" ]]; then
    echo "build-collector: using $bin (built by another process meanwhile)" >&2
else
    echo "build-collector: building otelcol-tracelet ($hash), this takes a few minutes the first time" >&2
    tmp="$(mktemp "$out_dir/.otelcol-tracelet.XXXXXX")"
    trap 'rm -f "$tmp"' EXIT
    start=$SECONDS
    (
        cd "$src"
        export CGO_ENABLED=0
        # -p 2: two parallel compile jobs keep peak memory moderate.
        # -mod=readonly: build exactly what go.mod/go.sum pin, never edit them.
        go build -p 2 -mod=readonly -buildvcs=false -trimpath -ldflags="-s -w" -o "$tmp" .
    ) 1>&2
    chmod 0755 "$tmp"
    mv -f "$tmp" "$bin"
    trap - EXIT
    echo "build-collector: built $bin in $((SECONDS - start))s" >&2
fi

echo "$bin"
