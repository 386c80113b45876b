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
# Upgrade scripts (sql/upgrade/voucher_ext--OLD--NEW.sql): cargo pgrx install copies only the
# ones directly in sql/, so they are copied here, beside the control file.
extdir="$("$PG_CONFIG" --sharedir)/extension"
for f in "$ROOT"/sql/upgrade/voucher_ext--*--*.sql; do
    [ -e "$f" ] || continue
    if [ -w "$extdir" ]; then install -m 644 "$f" "$extdir/"; else sudo install -m 644 "$f" "$extdir/"; fi
done
