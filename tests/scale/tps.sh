#!/usr/bin/env bash
# Throughput on this machine: one node vs a Citus coordinator with two workers (all three on
# this machine's cores), the same data and requests (tests/scale/tps/). Not part of `make test`;
# the figures are in the README ("Scaling out").
#   tests/scale/tps.sh     [TPS_SECONDS=20] [TPS_CLIENTS=8]
# Starts its own single node on VOUCHER_PORT_BASE+48 and reuses tests/scale/citus.sh's cluster
# (run it first with CITUS_KEEP=1). Both fsync=off, as citus.sh starts its nodes.
source "$(dirname "$0")/../../scripts/common.sh"
here="$ROOT/tests/scale/tps"
bin=$(pg_bindir)
base="$(cluster_base)"
one=$(( ${VOUCHER_PORT_BASE:-55400} + 48 ))
coord=${CITUS_PORT:-$(( ${VOUCHER_PORT_BASE:-55400} + 44 ))}
secs=${TPS_SECONDS:-20}; clients=${TPS_CLIENTS:-8}
"$ROOT/scripts/cluster.sh" start scale-one "$one" shared_preload_libraries=voucher_ext max_connections=50 fsync=off
trap '"$ROOT/scripts/cluster.sh" stop scale-one' EXIT
"$bin/psql" -X -q -h "$base/scale-one" -p "$one" -U postgres -d postgres -c "CREATE DATABASE voucher_citus"
"$bin/psql" -X -q -h "$base/scale-one" -p "$one" -U postgres -d voucher_citus -c "CREATE EXTENSION voucher_ext"
# CPU seconds a node spent (its postmaster's children, ended and waited for), in clock ticks
cpu() { awk '{print $16 + $17}' "/proc/$(head -1 "$base/$1/data/postmaster.pid")/stat"; }
for target in "one node:$base/scale-one:$one:scale-one" "3-node Citus:$base/scale-coord:$coord:scale-coord scale-w1 scale-w2"; do
    IFS=: read -r name host port nodes <<<"$target"
    "$bin/psql" -X -q -h "$host" -p "$port" -U postgres -d voucher_citus -f "$here/setup.sql" >/dev/null
    for w in validate redeem shop; do
        declare -A before=()
        for n in $nodes; do before[$n]=$(cpu "$n"); done
        out=$("$bin/pgbench" -n -h "$host" -p "$port" -U postgres -c "$clients" -j 2 -T "$secs" \
              -f "$here/$w.pgbench" voucher_citus 2>&1)
        sleep 1   # the backends of the run end and are waited for
        tps=$(sed -n 's/^tps = \([0-9.]*\).*/\1/p' <<<"$out")
        txns=$(sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p' <<<"$out")
        per=""
        for n in $nodes; do
            per="$per $n $(( ($(cpu "$n") - before[$n]) * 10000 / $(getconf CLK_TCK) / txns ))"
        done
        echo "$name | $w | $tps TPS ($clients clients, $secs s) | CPU per transaction, 0.1 ms:$per"
    done
done
