#!/usr/bin/env bash
# The test command (`make test`). In order: Rust unit tests, `cargo pgrx test`, then the
# extension installed into the system PostgreSQL and tested from outside against a throwaway
# cluster with pg_regress (tests/pg_regress), pg_isolation_regress (tests/isolation), a
# pgbench stress test (tests/stress) and a pooled Python client (tests/client); around them the
# operations tests (tests/ops): the upgrade from the previous release, before the current build
# is installed, and pg_dump/pg_restore round trips against the throwaway cluster.
# Then a hot standby and a Citus cluster of three nodes (tests/scale; Citus built when absent).
# Stops at the first failing layer, prints the diff, exits non-zero.
source "$(dirname "$0")/common.sh"
cd "$ROOT"
PORT=${VOUCHER_TEST_PORT:-54329}
total=$(now)

t=$(now)
"$ROOT/scripts/setup.sh"
log "setup: $(elapsed "$t")"

t=$(now)
log "1/13 Rust unit tests"
cargo test --lib --quiet -- --skip tests::pg_ || die "Rust unit tests failed"
log "unit tests: $(elapsed "$t")"

t=$(now)
log "2/13 #[pg_test] tests (cargo pgrx test pg$PG_MAJOR)"
# One test at a time: every #[pg_test] runs in its own transaction on one shared database, and
# several change the schema of the tables every redemption writes (a trigger, a rule, a policy,
# a column, to see the statements take over); run side by side, such a test and a redemption
# in another can take the same tables' locks in opposite orders and deadlock.
export RUST_TEST_THREADS=1
if is_root; then
    pgdata="$(cluster_base)/pgrx-test-data"
    mkdir -p "$pgdata" && chown postgres: "$pgdata"
    cargo pgrx test "pg$PG_MAJOR" --runas postgres --pgdata "$pgdata" || die "cargo pgrx test failed"
else
    cargo pgrx test "pg$PG_MAJOR" || die "cargo pgrx test failed"
fi
log "pgrx tests: $(elapsed "$t")"

t=$(now)
log "3/13 upgrade: the previous release installed, filled, upgraded and compared (tests/ops/upgrade.sh)"
"$ROOT/tests/ops/upgrade.sh" || die "the upgrade test failed"
log "upgrade: $(elapsed "$t")"

t=$(now)
log "4/13 install into $("$PG_CONFIG" --version) and start a throwaway cluster"
"$ROOT/scripts/install.sh"
"$ROOT/scripts/cluster.sh" start test "$PORT" fsync=off max_connections=100 \
    shared_preload_libraries=voucher_ext
trap '"$ROOT/scripts/cluster.sh" stop test' EXIT
sock="$(cluster_base)/test"
# the seal worker stays off, so tests see only the seals they make (tests/pg_regress/ops_worker
# turns it on for itself)
"$(pg_bindir)/psql" -X -q -h "$sock" -p "$PORT" -U postgres -d postgres \
    -c "ALTER SYSTEM SET voucher.seal_interval = 0" -c "SELECT pg_reload_conf()" >/dev/null
log "install: $(elapsed "$t")"

failed=0
t=$(now)
log "5/13 pg_regress (tests/pg_regress)"
out="$ROOT/target/pg_regress"
rm -rf "$out" && mkdir -p "$out"
"$(pgxs_dir)/../test/regress/pg_regress" --bindir="$(pg_bindir)" \
    --host="$sock" --port="$PORT" --user=postgres --dbname=voucher_regress \
    --inputdir="$ROOT/tests/pg_regress" --outputdir="$out" \
    --load-extension=voucher_ext --schedule="$ROOT/tests/pg_regress/schedule" || failed=1
if [ $failed = 1 ]; then
    [ -f "$out/regression.diffs" ] && cat "$out/regression.diffs"
    die "pg_regress failed (diffs above, also in $out/regression.diffs)"
fi
log "pg_regress: $(elapsed "$t")"

t=$(now)
log "6/13 pg_isolation_regress (tests/isolation)"
out="$ROOT/target/isolation"
rm -rf "$out" && mkdir -p "$out"
"$(pgxs_dir)/../test/isolation/pg_isolation_regress" --bindir="$(pg_bindir)" \
    --host="$sock" --port="$PORT" --user=postgres --dbname=voucher_isolation \
    --inputdir="$ROOT/tests/isolation" --outputdir="$out" \
    --load-extension=voucher_ext --schedule="$ROOT/tests/isolation/schedule" || failed=1
if [ $failed = 1 ]; then
    [ -f "$out/regression.diffs" ] && cat "$out/regression.diffs"
    die "pg_isolation_regress failed (diffs above, also in $out/regression.diffs)"
fi
log "isolation: $(elapsed "$t")"

t=$(now)
log "7/13 backups: pg_dump in three formats, restored on this cluster and on a new one (tests/ops/dump_restore.sh)"
"$ROOT/tests/ops/dump_restore.sh" "$sock" "$PORT" || die "the dump/restore test failed"
log "dump/restore: $(elapsed "$t")"

t=$(now)
log "8/13 stress: 32 pgbench clients on one limited voucher, a gift card and a per-customer limit"
STRESS_SECONDS=${STRESS_SECONDS:-20} "$ROOT/tests/stress/run.sh" "$sock" "$PORT" \
    || die "the stress test failed"
log "stress: $(elapsed "$t")"

t=$(now)
log "9/13 a Python shop client (psycopg 3, connection pool, 32 threads) against the cluster, then every public function with hostile arguments"
"$ROOT/tests/client/run.sh" "$sock" "$PORT" || die "the client test failed"
log "client: $(elapsed "$t")"

t=$(now)
log "10/13 throttle: a code guesser and an honest client side by side, then a flood of bad keys"
GUESS_SECONDS=${GUESS_SECONDS:-5} "$ROOT/tests/throttle/guess.sh" "$sock" "$PORT" \
    || die "the guessing test failed"
log "guessing: $(elapsed "$t")"
t=$(now)
log "11/13 crypto: the plaintext scan (tests/crypto/plaintext_scan.sh, its own throwaway cluster)"
VOUCHER_SCAN_PORT=${VOUCHER_SCAN_PORT:-$((PORT + 7))} "$ROOT/tests/crypto/plaintext_scan.sh" \
    || die "the plaintext scan failed"
log "plaintext scan: $(elapsed "$t")"
# privacy: the forget scan on disk (tests/privacy/forget_scan.sh, its own throwaway cluster)
t=$(now)
log "11/13 privacy: the forget scan: a forgotten customer's bytes in no heap or index file after VACUUM"
"$ROOT/tests/privacy/forget_scan.sh" || die "the forget scan failed"
log "forget scan: $(elapsed "$t")"

t=$(now)
log "12/13 scale: hot standby: a streaming standby serves the reads and refuses the writes (tests/scale)"
"$ROOT/tests/scale/standby.sh" || die "the hot-standby layer failed"
log "standby: $(elapsed "$t")"

t=$(now)
log "13/13 scale: Citus, a coordinator and two workers, the extension distributed (tests/scale)"
"$ROOT/tests/scale/citus.sh" || die "the Citus layer failed"
log "citus: $(elapsed "$t")"

log "all tests passed in $(elapsed "$total")"
