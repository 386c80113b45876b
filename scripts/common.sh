# Shared by the scripts in this directory. Source it; do not run it.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PG_MAJOR=15
PG_CONFIG=${PG_CONFIG:-/usr/lib/postgresql/$PG_MAJOR/bin/pg_config}
PGRX_VERSION=0.18.1
export PATH="$HOME/.cargo/bin:$PATH"

log() { printf '\033[1;34m==>\033[0m \033[1m%s\033[0m\n' "$*" >&2; }
die() { printf '\033[1;31merror:\033[0m %s\n' "$*" >&2; exit 1; }
is_root() { [ "$(id -u)" = 0 ]; }

# Runs a command as the owner of the throwaway clusters: `postgres` when we are root, since
# initdb and postgres refuse to run as root; ourselves otherwise.
as_pg() {
    if is_root; then runuser -u postgres -- "$@"; else "$@"; fi
}

# Where throwaway clusters live: target/ when the cluster owner can reach it, else a private
# directory under /tmp (a checkout under /root, say, is closed to the postgres user).
cluster_base() {
    local base="$ROOT/target/clusters"
    if is_root && ! runuser -u postgres -- test -x "$ROOT" 2>/dev/null; then
        base="/tmp/voucher_ext-$(printf '%s' "$ROOT" | sha256sum | cut -c1-12)"
    fi
    mkdir -p "$base"
    if is_root; then
        chown postgres: "$base"
        chmod o+x "$ROOT" "$ROOT/target" 2>/dev/null || true
    fi
    echo "$base"
}

pg_bindir() { "$PG_CONFIG" --bindir; }
pgxs_dir() { dirname "$("$PG_CONFIG" --pgxs)"; }

# Seconds since the epoch, for phase timings.
now() { date +%s; }
elapsed() { echo "$(( $(now) - $1 ))s"; }
