#!/usr/bin/env bash
# The stress test: 32 pgbench clients hammer one voucher with limit 100, a gift card and one
# customer's per-campaign limit for STRESS_SECONDS (default 20), then SQL checks that exactly the
# limits were used and every ledger balances. Then 32 clients redeem one voucher without a limit
# and roll back earlier redemptions at random (its uses spread over slots, issue 17) for
# STRESS_SECONDS / 2, and SQL checks every use is counted once, in the place its redemption names.
#   tests/stress/run.sh SOCKET_DIR PORT
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
host=${1:?socket dir}; port=${2:?port}
bindir=$("${PG_CONFIG:-/usr/lib/postgresql/15/bin/pg_config}" --bindir)
psql=("$bindir/psql" -X -q -h "$host" -p "$port" -U postgres)
"${psql[@]}" -d postgres -c "SET client_min_messages = warning" \
    -c "DROP DATABASE IF EXISTS voucher_stress" -c "CREATE DATABASE voucher_stress"
"${psql[@]}" -d voucher_stress -v ON_ERROR_STOP=1 -f "$here/setup.sql" >/dev/null
"$bindir/pgbench" -n -h "$host" -p "$port" -U postgres -c 32 -j 2 -T "${STRESS_SECONDS:-20}" \
    -f "$here/redeem.pgbench" voucher_stress | grep -E "transactions actually processed|tps|failed"
"${psql[@]}" -d voucher_stress -f "$here/check.sql"
"${psql[@]}" -d voucher_stress -v ON_ERROR_STOP=1 -f "$here/hot_setup.sql" >/dev/null
"$bindir/pgbench" -n -h "$host" -p "$port" -U postgres -c 32 -j 2 -T "$(( ${STRESS_SECONDS:-20} / 2 ))" \
    -f "$here/hot.pgbench" voucher_stress | grep -E "transactions actually processed|tps|failed"
"${psql[@]}" -d voucher_stress -f "$here/hot_check.sql"
