#!/usr/bin/env bash
# The demo command (`make demo`): builds and installs the extension, starts a private cluster,
# creates the extension and walks through examples/demo.sql. The cluster keeps running so you
# can look around; `make demo-stop` ends it.
source "$(dirname "$0")/common.sh"
cd "$ROOT"
PORT=${VOUCHER_DEMO_PORT:-54320}

"$ROOT/scripts/setup.sh"
sock="$(cluster_base)/demo"
log "building and installing voucher_ext into $("$PG_CONFIG" --version)"
"$ROOT/scripts/install.sh"
log "starting a private cluster in $sock (port $PORT, Unix socket only)"
"$ROOT/scripts/cluster.sh" start demo "$PORT" shared_preload_libraries=voucher_ext
psql=("$(pg_bindir)/psql" -X -h "$sock" -p "$PORT" -U postgres)
"${psql[@]}" -q -d postgres -c "CREATE DATABASE voucher_demo"
log "running examples/demo.sql"
"${psql[@]}" -d voucher_demo -v ON_ERROR_STOP=1 --echo-queries -f "$ROOT/examples/demo.sql" \
    || die "the demo script failed"
log "the demo cluster is still running. Connect with:"
echo "    psql -h $sock -p $PORT -U postgres voucher_demo"
log "stop it with: make demo-stop"
