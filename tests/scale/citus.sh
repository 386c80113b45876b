#!/usr/bin/env bash
# The Citus layer: a coordinator and two workers on Unix sockets of our own ports, Citus built by
# scripts/citus.sh when absent, the extension created and distributed, tenants on both workers.
# Then pg_regress runs tests/scale/sql/citus_*.sql against the coordinator (tenancy attack matrix,
# forged and replayed tokens, encrypted customers and their GDPR functions, audit tamper matrix),
# auto_explain shows a redemption with a customer as single-shard router plans, and pgbench
# races redemptions, tenants on different workers, checked exactly afterwards: one voucher per
# tenant (limit 100), and 4 customers per tenant against a per-customer limit of 3. The races
# run a fixed number of transactions (no timing).
#   tests/scale/citus.sh        ports CITUS_PORT (default VOUCHER_PORT_BASE+44 or 55444), +1, +2
# Exits 0 with "skipped" when Citus is neither installed nor buildable here (no source tarball).
source "$(dirname "$0")/../../scripts/common.sh"
here="$ROOT/tests/scale"
port=${CITUS_PORT:-$(( ${VOUCHER_PORT_BASE:-55400} + 44 ))}
bin=$(pg_bindir)
base="$(cluster_base)"
db=voucher_citus

rc=0
"$ROOT/scripts/citus.sh" || rc=$?
if [ $rc = 3 ]; then
    log "Citus layer SKIPPED: Citus is not installed and its source tarball is not here (see scripts/citus.sh)"
    exit 0
fi
[ $rc = 0 ] || die "building Citus failed"

nodes=(scale-coord scale-w1 scale-w2)
stop_all() { for n in "${nodes[@]}"; do "$ROOT/scripts/cluster.sh" stop "$n"; done; }
[ -n "${CITUS_KEEP:-}" ] || trap stop_all EXIT   # CITUS_KEEP=1 leaves the nodes running
for i in 0 1 2; do
    "$ROOT/scripts/cluster.sh" start "${nodes[$i]}" $((port + i)) fsync=off \
        shared_preload_libraries=citus,voucher_ext max_prepared_transactions=100 max_connections=120
done
dir() { echo "$base/$1"; }
psql_on() { # node, then psql arguments
    local i=$1; shift
    "$bin/psql" -X -q -v ON_ERROR_STOP=1 -h "$(dir "${nodes[$i]}")" -p $((port + i)) -U postgres "$@"
}
for i in 0 1 2; do
    psql_on $i -d postgres -c "CREATE DATABASE $db"
    psql_on $i -d $db -c "SET client_min_messages = warning" -c "CREATE EXTENSION citus"
done
psql_on 0 -d $db -c "SET client_min_messages = warning" \
    -c "SELECT citus_set_coordinator_host('$(dir scale-coord)', $port)" \
    -c "SELECT citus_add_node('$(dir scale-w1)', $((port + 1)))" \
    -c "SELECT citus_add_node('$(dir scale-w2)', $((port + 2)))" >/dev/null

# the extension, created on the coordinator (Citus creates it on the workers), then distributed
psql_on 0 -d $db -c "SET client_min_messages = warning" -c "CREATE EXTENSION voucher_ext" \
    -c "SELECT voucher.distribute() AS tables_distributed"
# the keys every node must share: the cluster key (signs contexts) and the audit key (row HMACs)
cdata="$(dir scale-coord)/data"
[ -f "$cdata/voucher_cluster.key" ] || die "voucher.distribute() made no cluster key file"
psql_on 0 -d $db -c "SELECT voucher.seal_audit()" >/dev/null   # creates the audit key file
[ -f "$cdata/voucher_audit.key" ] || die "no audit key file on the coordinator"
for w in scale-w1 scale-w2; do
    for k in voucher_cluster.key voucher_audit.key; do
        cp "$cdata/$k" "$(dir $w)/data/$k"
        if is_root; then chown postgres: "$(dir $w)/data/$k"; fi
        chmod 600 "$(dir $w)/data/$k"
    done
done

out="$ROOT/target/scale-citus"
rm -rf "$out" && mkdir -p "$out"
"$(pgxs_dir)/../test/regress/pg_regress" --bindir="$bin" --host="$(dir scale-coord)" --port="$port" \
    --user=postgres --dbname=$db --use-existing --inputdir="$here" --outputdir="$out" \
    citus_setup citus_tenancy citus_customers citus_audit || {
    [ -f "$out/regression.diffs" ] && cat "$out/regression.diffs"
    die "the Citus layer failed (diffs above, also in $out/regression.diffs)"
}

# a worker node does not seal: its sealer (voucher.seal_interval) skips it, and a call is refused
out_w=$(psql_on 1 -d $db -c "SET ROLE regress_op" -c "SELECT voucher.seal_audit()" 2>&1 || true)
grep -q "Citus worker node: the audit log is sealed on the coordinator" <<<"$out_w" \
    || { echo "$out_w"; die "seal_audit on a worker node was not refused"; }

# EXPLAIN of every statement a redemption with a customer runs (auto_explain, nested statements
# included): each distributed statement must be a single-shard router plan (Task Count: 1), the
# customer's look-up by its blind index among them
psql_on 0 -d $db -c "LOAD 'auto_explain'" -c "SET auto_explain.log_min_duration = 0" \
    -c "SET auto_explain.log_nested_statements = on" -c "SET auto_explain.log_level = notice" \
    -c "SET client_min_messages = notice" -c "SET ROLE regress_client" -c "BEGIN" \
    -c "SELECT voucher.authenticate(redeemer) IS NOT NULL FROM citus_tenant WHERE name = 'a'" \
    -c "SELECT discount FROM voucher.redeem('PER-A-9', order_amount => 30, customer => 'a-carl')" \
    -c "COMMIT" >"$out/plans.log" 2>&1 || { cat "$out/plans.log"; die "the explained redemption failed"; }
# (auto_explain shows a statement run through SPI twice: the coordinator's plan and, nested, the
# shard's; count the coordinator's, which start a line)
scans=$(grep -c '^Custom Scan (Citus' "$out/plans.log" || true)
router=$( (grep -A1 '^Custom Scan (Citus Adaptive)' "$out/plans.log" || true) | grep -c '^  Task Count: 1$' || true)
multi=$(grep -cE 'Task Count: ([2-9]|[1-9][0-9]+)$' "$out/plans.log" || true)
split=$(grep -cE 'Distributed Subplan|pull to coordinator|repartition' "$out/plans.log" || true)
log "a redemption's statements: $scans distributed plans, $router single-shard router plans (Task Count: 1), $multi multi-shard, $split sub-plans or pulls"
lookup=$(grep -cE '(Index|Bitmap).* on customer_[0-9]+' "$out/plans.log" || true)
log "customer look-ups on the customer's shard: $lookup"
[ "$scans" -gt 0 ] && [ "$multi" = 0 ] && [ "$split" = 0 ] && [ "$router" = "$scans" ] && [ "$lookup" -gt 0 ] \
    || { cat "$out/plans.log"; die "a redemption ran a statement that is not a single-shard router plan"; }

# the races: 16 clients, even ones tenant a, odd ones b (on different workers), a fixed number
# of transactions each: 128 attempts per hot voucher (limit 100), 32 per race customer (limit 3)
race() { # name, transactions per client, check
    "$bin/pgbench" -n -h "$(dir scale-coord)" -p "$port" -U postgres -c 16 -j 2 -t "$2" \
        -f "$here/$1.pgbench" $db >"$out/$1.log" 2>&1 || { cat "$out/$1.log"; die "pgbench $1 failed"; }
    grep -E "processed|tps|failed" "$out/$1.log" >&2 || true
    psql_on 0 -d $db -f "$here/$3" || die "the check of $1 failed"
}
race citus_race 16 citus_race_check.sql
race citus_customer_race 8 citus_customer_race_check.sql
# customer retention on the cluster: a customer of b without activity for 400 days (backdated on
# b's worker with its triggers off, as only a superuser there can) is forgotten by
# forget_inactive_customers, and b's audit trail still verifies
idle=$(psql_on 0 -d $db -At -c "SET ROLE regress_client" -c "BEGIN" \
    -c "SELECT voucher.authenticate(admin) IS NULL FROM citus_tenant WHERE name = 'b'" \
    -c "SELECT voucher.configure('customer_retention_days', '30')" \
    -c "SELECT voucher.upsert_customer('b-idle', email => 'idle@b.example')" -c "COMMIT" | tail -1)
read -r shard wport < <(psql_on 0 -d $db -At -F ' ' -c "SELECT shard_name('voucher.customer',
    get_shard_id_for_distribution_column('voucher.customer', tenant)), port FROM citus_tenant WHERE name = 'b'")
psql_on $((wport - port)) -d $db -c "BEGIN" -c "SET LOCAL session_replication_role = replica" \
    -c "UPDATE $shard SET created_at = created_at - interval '400 days',
               updated_at = updated_at - interval '400 days' WHERE customer_id = '$idle'" \
    -c "COMMIT" >/dev/null
psql_on 0 -d $db -c "SET ROLE regress_client" -c "
DO \$\$
DECLARE
    n bigint;
    v record;
BEGIN
    PERFORM voucher.authenticate(admin) FROM citus_tenant WHERE name = 'b';
    n := voucher.forget_inactive_customers();
    IF n <> 1 OR EXISTS (SELECT 1 FROM voucher.customers WHERE source_id = 'b-idle') THEN
        RAISE EXCEPTION 'retention forgot % customers, expected b-idle alone', n;
    END IF;
    PERFORM voucher.authenticate(auditor) FROM citus_tenant WHERE name = 'b';
    SELECT * INTO v FROM voucher.verify_audit();
    IF NOT v.ok THEN
        RAISE EXCEPTION 'b does not verify after retention: %', v.problem;
    END IF;
    RAISE NOTICE 'Citus retention check passed: 1 idle customer forgotten, the audit trail verifies';
END
\$\$" || die "the Citus retention check failed"
log "Citus layer passed"
