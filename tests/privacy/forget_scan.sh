#!/usr/bin/env bash
# The forget scan on disk (issue 15). tests/pg_regress/sql/privacy.sql already shows, through
# SQL, that after forget_customer no table holds the customer's strings and nothing the tenant can
# still decrypt turns into them. This script looks beneath SQL, at the files of a throwaway
# cluster, where dead row versions and index entries live on until VACUUM:
#   1. a customer with known source_id, e-mail, name, address and phone (metadata of its profile
#      and of its redemptions), a consent and a refused redemption (an audit row quoting it), and
#      a control customer that stays; before forgetting, as a superuser, the forgotten customer's
#      stored bytes are taken: the ciphertexts of its profile fields and redemption metadata, its
#      two blind indexes, and its wrapped key (what opens the personal part of its audit rows);
#   2. forget_customer, then VACUUM of the extension's tables and CHECKPOINT, the cluster stopped;
#   3. tests/privacy/forget_scan.py searches every file: the plaintext strings must be nowhere
#      (heap, indexes, WAL, statistics, server log); the forgotten customer's ciphertexts, blind
#      indexes and wrapped key must be in no heap or index file (base/, global/). WAL (pg_wal/) may
#      still hold them: it records the old row versions and full-page images until its segments
#      are recycled after later checkpoints (and archives keep them as long as they are kept);
#      the script reports how many it finds there, it does not fail on them. The control
#      customer's ciphertexts must be found in the heap, so the search is known to work.
#   tests/privacy/forget_scan.sh            (after scripts/install.sh)
# Port: $VOUCHER_PRIVACY_SCAN_PORT, default $VOUCHER_PORT_BASE + 12 (55412).
source "$(dirname "$0")/../../scripts/common.sh"
cd "$ROOT"
port=${VOUCHER_PRIVACY_SCAN_PORT:-$(( ${VOUCHER_PORT_BASE:-55400} + 12 ))}
name=privacy-scan
dir="$(cluster_base)/$name"
bindir=$(pg_bindir)

"$ROOT/scripts/cluster.sh" start "$name" "$port" fsync=off shared_preload_libraries=voucher_ext \
    voucher.seal_interval=1 autovacuum=off
trap '"$ROOT/scripts/cluster.sh" stop '"$name" EXIT
psql=("$bindir/psql" -X -q -v ON_ERROR_STOP=1 -h "$dir" -p "$port" -U postgres)
"${psql[@]}" -d postgres -c "CREATE DATABASE scan"
"${psql[@]}" -d scan -c "CREATE EXTENSION voucher_ext"

run=$(od -An -N4 -tx1 /dev/urandom | tr -d ' \n')
src="forget-src-$run-qz"
email="forget.me.$run@example-mail.org"
person="Forgetta Quillby $run"
address="$run Erasure Lane, Springfield"
phone="+1-555-$run-0042"
keep_src="keep-src-$run-qz"
work="$ROOT/target/privacy-scan"
rm -rf "$work" && mkdir -p "$work"
printf '%s\n' "$src" "$email" "$person" "$address" "$phone" >"$work/plaintext.txt"

# the workload (values as psql variables)
"${psql[@]}" -d scan -v src="$src" -v email="$email" -v person="$person" -v address="$address" \
    -v phone="$phone" -v keep_src="$keep_src" >"$work/workload.out" 2>&1 <<'SQL' \
    || { cat "$work/workload.out"; die "the workload failed"; }
SELECT voucher.create_tenant('forget scan') AS t \gset
SELECT voucher.create_api_key('admin', tenant => :'t') AS admin \gset
BEGIN;
SELECT voucher.authenticate(:'admin');
SELECT voucher.create_campaign('scan', redemption_limit => NULL, per_customer_limit => 5) AS c \gset
SELECT voucher.add_code(:'c', 'SCAN-1');
SELECT voucher.add_code(voucher.create_campaign('once', redemption_limit => 1), 'ONCE-1');
SELECT voucher.upsert_customer(:'src', :'email', :'person', jsonb_build_object('address', :'address'));
SELECT voucher.upsert_customer(:'keep_src', 'kept.' || :'email', 'Kept ' || :'person',
                               jsonb_build_object('address', 'kept ' || :'address'));
SELECT voucher.set_consent(:'src', 'newsletter', true, 'checkout form v3');
SELECT redemption_id FROM voucher.redeem('SCAN-1', customer => :'src', metadata => jsonb_build_object('phone', :'phone'));
SELECT redemption_id FROM voucher.redeem('SCAN-1', customer => :'src', metadata => jsonb_build_object('phone', :'phone'));
SELECT redemption_id FROM voucher.redeem('SCAN-1', customer => :'src', metadata => jsonb_build_object('phone', :'phone'));
SELECT * FROM voucher.redeem('ONCE-1', customer => :'keep_src');
COMMIT;
-- a refused redemption (the code is used up): its audit row quotes the customer, encrypted
-- under the customer's own key
\set ON_ERROR_STOP 0
-- psql puts variables into the statement's text (an application binds them), and the server
-- logs the text of a failing statement: not this one's
SET log_min_error_statement = panic;
BEGIN;
SELECT voucher.authenticate(:'admin');
SELECT count(*) FROM voucher.redeem('ONCE-1', customer => :'src');
ROLLBACK;
SQL
# the refused redemption's event is written after the rollback: give it a moment to land
for _ in $(seq 1 50); do
    n=$("${psql[@]}" -At -d scan -c "SELECT count(*) FROM voucher.audit_event WHERE action = 'redemption.failed'")
    [ "$n" -ge 1 ] && break
    sleep 0.1
done
[ "$n" -ge 1 ] || die "the refused redemption left no audit row"

# the stored bytes, as hex, one a line: the forgotten customer's, and the control customer's
bytes() { # source_id -> its customer's ciphertexts, blind indexes, key, redemption metadata
    "${psql[@]}" -At -d scan -v who="$1" <<'SQL' | grep -v '^$'
BEGIN;
SELECT voucher.act_as(tenant_id) FROM voucher.tenant WHERE name = 'forget scan' \gset
SELECT customer_id AS id FROM voucher.customers WHERE source_id = :'who' \gset
COMMIT;
SELECT encode(b, 'hex') FROM (
    SELECT unnest(ARRAY[c.source_id, c.email, c.name, c.metadata, c.email_index, c.source_index,
                        c.audit_key]) b
      FROM voucher.customer c WHERE c.customer_id = :'id'
    UNION ALL SELECT r.metadata FROM voucher.redemption r WHERE r.customer_id = :'id') x
 WHERE b IS NOT NULL;
SQL
}
bytes "$src" >"$work/forgotten.hex"
bytes "$keep_src" >"$work/control.hex"
[ "$(grep -c . "$work/forgotten.hex")" -ge 9 ] || die "expected at least 9 stored values of the customer to forget"

"${psql[@]}" -d scan -v src="$src" >"$work/forget.out" <<'SQL'
BEGIN;
SELECT voucher.act_as(tenant_id) FROM voucher.tenant WHERE name = 'forget scan' \gset
SELECT voucher.forget_customer(:'src') AS forgotten;
COMMIT;
SQL
grep -q '"profile": 1' "$work/forget.out" || { cat "$work/forget.out"; die "forget_customer did not forget"; }
"${psql[@]}" -d scan -c "VACUUM" -c "CHECKPOINT"
"$ROOT/scripts/cluster.sh" stop "$name"
trap - EXIT

python3 "$ROOT/tests/privacy/forget_scan.py" "$dir/data" "$dir/server.log" "$work" \
    || die "the forget scan found the forgotten customer on disk (above)"
log "forget scan passed"
