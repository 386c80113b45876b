#!/usr/bin/env bash
# The hot-standby layer: a primary and a streaming standby made with `pg_basebackup -R`, both on
# Unix sockets of our own ports, the extension installed (scripts/install.sh ran before). Then
# pg_regress runs tests/scale/sql/standby_reads.sql on the standby (reads work, writes 25006) and
# standby_primary.sql on the primary (nothing happened there; read-only transactions refuse too).
#   tests/scale/standby.sh            ports SCALE_PORT (default VOUCHER_PORT_BASE+40 or 55440), +1
source "$(dirname "$0")/../../scripts/common.sh"
here="$ROOT/tests/scale"
port=${SCALE_PORT:-$(( ${VOUCHER_PORT_BASE:-55400} + 40 ))}
sport=$((port + 1))
base="$(cluster_base)"
bin=$(pg_bindir)
primary="$base/scale-primary"
standby="$base/scale-standby"

stop_all() {
    "$ROOT/scripts/cluster.sh" stop scale-primary
    if [ -d "$standby/data" ]; then as_pg "$bin/pg_ctl" -D "$standby/data" stop -m fast >/dev/null 2>&1 || true; fi
}
trap stop_all EXIT

# the environment that once put a Rust backtrace (with the build's file paths) into a DETAIL
export RUST_BACKTRACE=1
"$ROOT/scripts/cluster.sh" start scale-primary "$port" fsync=off shared_preload_libraries=voucher_ext \
    wal_level=replica max_wal_senders=4
psql=("$bin/psql" -X -q -v ON_ERROR_STOP=1 -U postgres)
"${psql[@]}" -h "$primary" -p "$port" -d postgres -c "CREATE DATABASE voucher_standby"
"${psql[@]}" -h "$primary" -p "$port" -d voucher_standby -f "$here/primary_setup.sql" >/dev/null

# the standby: a base backup of the primary (with its audit key file) that streams from it
rm -rf "$standby" && mkdir -p "$standby"
if is_root; then chown postgres: "$standby"; fi
as_pg "$bin/pg_basebackup" -h "$primary" -p "$port" -U postgres -D "$standby/data" -R -X stream \
    -c fast >"$standby/basebackup.log" 2>&1 || { cat "$standby/basebackup.log"; die "pg_basebackup failed"; }
as_pg "$bin/pg_ctl" -D "$standby/data" -l "$standby/server.log" \
    -o "-p $sport -k $standby -c listen_addresses='' -c hot_standby=on" -w start >/dev/null \
    || { cat "$standby/server.log"; die "the standby did not start"; }

# a write after the base backup, so the standby must have streamed it
"${psql[@]}" -h "$primary" -p "$port" -d voucher_standby \
    -c "SET ROLE regress_client" -c "BEGIN" \
    -c "SELECT voucher.authenticate(key) FROM standby_key WHERE name = 'redeemer'" \
    -c "SELECT voucher.upsert_customer('cust-streamed')" -c "COMMIT" >/dev/null
lsn=$("${psql[@]}" -At -h "$primary" -p "$port" -d voucher_standby -c "SELECT pg_current_wal_lsn()")
for _ in $(seq 1 100); do
    caught=$("${psql[@]}" -At -h "$standby" -p "$sport" -d voucher_standby \
        -c "SELECT pg_last_wal_replay_lsn() >= '$lsn'::pg_lsn" 2>/dev/null || echo f)
    [ "$caught" = t ] && break
    sleep 0.1
done
[ "$caught" = t ] || die "the standby did not replay up to $lsn in 10 s"

out="$ROOT/target/scale-standby"
rm -rf "$out" && mkdir -p "$out"
regress() { # host port test
    "$(pgxs_dir)/../test/regress/pg_regress" --bindir="$bin" --host="$1" --port="$2" \
        --user=postgres --dbname=voucher_standby --use-existing \
        --inputdir="$here" --outputdir="$out" "$3" || {
        [ -f "$out/regression.diffs" ] && cat "$out/regression.diffs"
        die "the standby layer failed: $3 (diffs above, also in $out/regression.diffs)"
    }
}
regress "$standby" "$sport" standby_reads
regress "$primary" "$port" standby_primary
# the standby's own log shows no Rust backtrace either
if grep -n 'rust_begin_unwind\|\.rs:[0-9]' "$standby/server.log"; then
    die "the standby's log shows a Rust backtrace or source path (above)"
fi
# privacy: the unaudited exports on the standby are in its log (tenant and key, no customer)
grep -q 'exported by key:.* without an audit row' "$standby/server.log" \
    || die "the standby's log does not show the unaudited export"
if grep -n 'cust-1\|c1@example\.com' "$standby/server.log"; then
    die "the standby's log shows a customer's id or e-mail (above)"
fi
log "standby layer passed"
