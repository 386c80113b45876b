#!/usr/bin/env bash
# Installs what building and testing need, and nothing that is already there:
# Debian packages, cargo-pgrx $PGRX_VERSION, and pgrx's configuration for the system PostgreSQL.
source "$(dirname "$0")/common.sh"

packages=(postgresql-$PG_MAJOR postgresql-server-dev-$PG_MAJOR postgresql-contrib sudo clang libclang-dev pkg-config python3-venv)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    is_root || die "missing Debian packages: ${missing[*]} (run this as root, or install them)"
    log "installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq || die "apt-get update failed"
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
        || die "apt-get install ${missing[*]} failed"
fi
[ -x "$PG_CONFIG" ] || die "pg_config not found at $PG_CONFIG (set PG_CONFIG)"

command -v cargo >/dev/null || die "cargo not found: install Rust (rustup) first"
if [ "$(cargo pgrx --version 2>/dev/null | awk '{print $2}')" != "$PGRX_VERSION" ]; then
    log "installing cargo-pgrx $PGRX_VERSION (takes several minutes)"
    cargo install cargo-pgrx --version "$PGRX_VERSION" --locked --quiet \
        || die "cargo install cargo-pgrx $PGRX_VERSION failed"
fi

pgrx_config="${PGRX_HOME:-$HOME/.pgrx}/config.toml"
if ! grep -qs "^pg$PG_MAJOR = \"$PG_CONFIG\"" "$pgrx_config"; then
    log "configuring pgrx for $PG_CONFIG"
    cargo pgrx init --pg$PG_MAJOR "$PG_CONFIG" >/dev/null || die "cargo pgrx init failed"
fi
