#!/usr/bin/env bash
# Backup round trips: a database with data in every table of the extension (tests/ops/populate.sql)
# is dumped with pg_dump in custom, directory and plain format, each with and without --no-owner,
# and every dump is restored into a new database of the same cluster and of a freshly initdb'd
# second cluster. Each restore must bring back every row of every table and every sequence value
# (tests/ops/counts.sql, compared line by line) and pass tests/ops/check.sql (verify_audit per
# tenant, keys, limits, per-customer usage, gift balance, idempotent replays, sealing continues).
# On the second cluster a restore without the audit key file must make verify_audit say that the
# key does not match; the key file is then copied beside the new cluster's data, as the README's
# "Backup and restore" section says. Also: a dump by a role that row-level security would filter
# fails loudly instead of writing an incomplete dump.
#   tests/ops/dump_restore.sh SOCKET_DIR PORT
source "$(dirname "$0")/../../scripts/common.sh"
here="$ROOT/tests/ops"
host=${1:?socket dir}; port=${2:?port}
port2=$(( ${VOUCHER_PORT_BASE:-54360} + 7 ))
bin=$(pg_bindir)
work="$ROOT/target/ops-dump"
rm -rf "$work" && mkdir -p "$work"

q() { "$bin/psql" -X -q -v ON_ERROR_STOP=1 -U postgres "$@"; }
ms() { echo $(( ($(date +%s%N) - $1) / 1000000 )); }
timings="$work/timings.txt"
: >"$timings"

src=voucher_dump_src
q -h "$host" -p "$port" -d postgres -c "SET client_min_messages = warning" \
    -c "DROP DATABASE IF EXISTS $src" -c "CREATE DATABASE $src"
q -h "$host" -p "$port" -d "$src" -c "CREATE EXTENSION voucher_ext"
out=$(q -h "$host" -p "$port" -d "$src" -At -f "$here/populate.sql")
key_a=$(sed -n 's/^key_a=//p' <<<"$out")
key_b=$(sed -n 's/^key_b=//p' <<<"$out")
[ -n "$key_a" ] && [ -n "$key_b" ] || die "populate.sql printed no keys: $out"
before=$(q -h "$host" -p "$port" -d "$src" -At -f "$here/counts.sql")
echo "$before" >"$work/counts-source.txt"
if grep -E ' 0$' <<<"$before"; then die "populate.sql left the tables above empty"; fi

dumps=()
for fmt in c d p; do
    for own in owner no-owner; do
        f="$work/dump-$fmt-$own"
        t=$(date +%s%N)
        opts=(-F"$fmt" -f "$f")
        [ "$own" = no-owner ] && opts+=(--no-owner)
        "$bin/pg_dump" -h "$host" -p "$port" -U postgres "${opts[@]}" "$src" \
            || die "pg_dump -F$fmt ($own) failed"
        echo "pg_dump -F$fmt $own: $(ms "$t") ms" >>"$timings"
        dumps+=("$fmt:$own")
    done
done

# restore HOST PORT DB FORMAT OWNER: a new database, the dump restored into it, then compared
restore() {
    local h=$1 p=$2 db=$3 fmt=$4 own=$5 f="$work/dump-$4-$5" t
    q -h "$h" -p "$p" -d postgres -c "SET client_min_messages = warning" \
        -c "DROP DATABASE IF EXISTS $db" -c "CREATE DATABASE $db"
    t=$(date +%s%N)
    if [ "$fmt" = p ]; then
        q -h "$h" -p "$p" -d "$db" -f "$f" >"$work/restore.log" 2>&1 \
            || { cat "$work/restore.log"; die "psql -f (plain, $own) into $db failed"; }
    else
        local opts=(--exit-on-error -h "$h" -p "$p" -U postgres -d "$db")
        [ "$own" = no-owner ] && opts+=(--no-owner)
        "$bin/pg_restore" "${opts[@]}" "$f" >"$work/restore.log" 2>&1 \
            || { cat "$work/restore.log"; die "pg_restore -F$fmt ($own) into $db failed"; }
    fi
    echo "restore -F$fmt $own into $db (port $p): $(ms "$t") ms" >>"$timings"
}

compare() {
    local h=$1 p=$2 db=$3 after
    after=$(q -h "$h" -p "$p" -d "$db" -At -f "$here/counts.sql")
    if [ "$after" != "$before" ]; then
        diff <(echo "$before") <(echo "$after") || true
        die "$db: row counts or sequence values differ from the source (diff above: < source, > restored)"
    fi
}

check() {
    local h=$1 p=$2 db=$3
    q -h "$h" -p "$p" -d "$db" -v key_a="$key_a" -v key_b="$key_b" -f "$here/check.sql" >/dev/null \
        || die "$db: the restored data failed tests/ops/check.sql (above)"
}

log "   dump/restore on the same cluster"
for d in "${dumps[@]}"; do
    fmt=${d%%:*}; own=${d#*:}
    db="voucher_restored_${fmt}_${own//-/_}"
    restore "$host" "$port" "$db" "$fmt" "$own"
    compare "$host" "$port" "$db"
    check "$host" "$port" "$db"
    q -h "$host" -p "$port" -d postgres -c "DROP DATABASE $db"
done

log "   dump/restore onto a freshly initialised cluster (port $port2)"
"$ROOT/scripts/cluster.sh" start ops-restore "$port2" shared_preload_libraries=voucher_ext \
    voucher.seal_interval=0
trap '"$ROOT/scripts/cluster.sh" stop ops-restore' EXIT
host2="$(cluster_base)/ops-restore"

# without the key file: the data is all there, but verify_audit names the key, not a row
restore "$host2" "$port2" voucher_nokey c owner
compare "$host2" "$port2" voucher_nokey
verdict=$(q -h "$host2" -p "$port2" -d voucher_nokey -At \
    -c "BEGIN" -c "SELECT voucher.authenticate('$key_b') IS NOT NULL" \
    -c "SELECT problem FROM voucher.verify_audit()" -c "COMMIT" | tail -1)
[[ "$verdict" == "audit key does not match"* ]] \
    || die "without the key file, verify_audit said: $verdict"
fp=$(q -h "$host2" -p "$port2" -d voucher_nokey -At -c "SELECT matching || ' ' || other FROM voucher.key_fingerprints()")
[ "$fp" = "0 2" ] || die "without the key file, key_fingerprints() matching/other: $fp"

# copy the key file beside the new cluster's data (new sessions read it; no restart needed)
srckey=$(q -h "$host" -p "$port" -d postgres -At -c "SHOW data_directory")/voucher_audit.key
dstkey=$(q -h "$host2" -p "$port2" -d postgres -At -c "SHOW data_directory")/voucher_audit.key
cp "$srckey" "$dstkey"
if is_root; then chown postgres: "$dstkey"; fi
chmod 600 "$dstkey"
for d in "${dumps[@]}"; do
    fmt=${d%%:*}; own=${d#*:}
    db="voucher_restored_${fmt}_${own//-/_}"
    restore "$host2" "$port2" "$db" "$fmt" "$own"
    compare "$host2" "$port2" "$db"
    check "$host2" "$port2" "$db"
done

# a role that row-level security would filter cannot make a silently incomplete dump
q -h "$host" -p "$port" -d "$src" -c "SET client_min_messages = warning" \
    -c "DROP ROLE IF EXISTS voucher_dump_probe" -c "CREATE ROLE voucher_dump_probe LOGIN" \
    -c "GRANT USAGE ON SCHEMA voucher TO voucher_dump_probe" \
    -c "GRANT SELECT ON ALL TABLES IN SCHEMA voucher TO voucher_dump_probe" \
    -c "GRANT SELECT ON ALL SEQUENCES IN SCHEMA voucher TO voucher_dump_probe"
if "$bin/pg_dump" -h "$host" -p "$port" -U voucher_dump_probe -Fc -f "$work/probe.dump" "$src" \
        2>"$work/probe.log"; then
    die "a dump by a role under row-level security succeeded"
fi
q -h "$host" -p "$port" -d "$src" -c "REVOKE ALL ON ALL TABLES IN SCHEMA voucher FROM voucher_dump_probe" \
    -c "REVOKE ALL ON ALL SEQUENCES IN SCHEMA voucher FROM voucher_dump_probe" \
    -c "REVOKE ALL ON SCHEMA voucher FROM voucher_dump_probe" -c "DROP ROLE voucher_dump_probe"
grep -q "row-level security" "$work/probe.log" \
    || { cat "$work/probe.log"; die "the refused dump did not name row-level security"; }

q -h "$host" -p "$port" -d postgres -c "DROP DATABASE $src"
sed 's/^/   /' "$timings"
log "   every dump restored every row ($(wc -l <<<"$before") tables and sequences), on both clusters"
