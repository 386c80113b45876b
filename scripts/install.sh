#!/usr/bin/env bash
# Builds the extension and installs it into the PostgreSQL that $PG_CONFIG belongs to.
#   scripts/install.sh [--release]
# As root this writes the system extension directories directly; otherwise it uses sudo
# when they are not writable.
source "$(dirname "$0")/common.sh"
cd "$ROOT"
args=(--pg-config "$PG_CONFIG")
[ "${1:-}" = "--release" ] && args+=(--release)
if ! is_root && [ ! -w "$("$PG_CONFIG" --pkglibdir)" ]; then args+=(--sudo); fi
cargo pgrx install "${args[@]}" >"$ROOT/target/install.log" 2>&1 \
    || { tail -50 "$ROOT/target/install.log"; die "cargo pgrx install failed"; }
