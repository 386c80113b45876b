#!/usr/bin/env bash
# The plaintext scan (issue 14): on a throwaway cluster with the extension (and
# pg_stat_statements when available) preloaded and the log settings at their defaults, a
# workload creates customers with known e-mail addresses, names, ids and metadata and redeems
# with them (tests/crypto/plaintext_scan.py, values as bound parameters); then CHECKPOINT, the
# cluster stops (pg_stat_statements writes its file), and every file of the data directory
# (heap, indexes, WAL, statistics) and the server log is searched for those strings: any hit
# fails. A control string stored in plaintext on purpose must be found, so the search is known
# to work.
#   tests/crypto/plaintext_scan.sh            (after scripts/install.sh)
# Port: $VOUCHER_SCAN_PORT, default $VOUCHER_TEST_PORT + 7 (54336).
source "$(dirname "$0")/../../scripts/common.sh"
cd "$ROOT"
port=${VOUCHER_SCAN_PORT:-$(( ${VOUCHER_TEST_PORT:-54329} + 7 ))}
name=crypto-scan
dir="$(cluster_base)/$name"
bindir=$(pg_bindir)
preload=voucher_ext
if [ -f "$("$PG_CONFIG" --pkglibdir)/pg_stat_statements.so" ]; then
    preload="voucher_ext,pg_stat_statements"
fi

"$ROOT/scripts/cluster.sh" start "$name" "$port" fsync=off "shared_preload_libraries=$preload"
trap '"$ROOT/scripts/cluster.sh" stop '"$name" EXIT
psql=("$bindir/psql" -X -q -v ON_ERROR_STOP=1 -h "$dir" -p "$port" -U postgres)
"${psql[@]}" -d postgres -c "CREATE DATABASE scan"
"${psql[@]}" -d scan -c "CREATE EXTENSION voucher_ext"
if [ "$preload" != voucher_ext ]; then
    "${psql[@]}" -d scan -c "CREATE EXTENSION pg_stat_statements"
fi

# the Python environment of tests/client (made there when missing)
venv="$ROOT/target/venv"
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import psycopg' 2>/dev/null; then
    rm -rf "$venv"
    "${PYTHON:-python3}" -m venv "$venv" >/dev/null || die "python3 -m venv failed (apt-get install python3-venv)"
    "$venv/bin/pip" install --quiet --disable-pip-version-check 'psycopg[binary]' psycopg_pool \
        || die "pip could not install psycopg[binary]"
fi

strings="$ROOT/target/crypto-scan-strings.txt"
SCAN_HOST="$dir" SCAN_PORT="$port" SCAN_DB=scan PYTHONDONTWRITEBYTECODE=1 \
    "$venv/bin/python" "$ROOT/tests/crypto/plaintext_scan.py" >"$strings" \
    || die "the scan workload failed"
n=$(grep -c . "$strings")
[ "$n" -ge 20 ] || die "the workload printed only $n strings"

control="plaintext-control-$(od -An -N6 -tx1 /dev/urandom | tr -d ' \n')"
"${psql[@]}" -d scan -c "CREATE TABLE public.scan_control (t text)" \
    -c "INSERT INTO public.scan_control VALUES ('$control' || '-stored')" -c "CHECKPOINT"
"$ROOT/scripts/cluster.sh" stop "$name"
trap - EXIT

files=$(find "$dir/data" "$dir/server.log" -type f | wc -l)
grep -r -a -q -F "$control-stored" "$dir/data" \
    || die "the scan does not find the control string stored in plaintext: the search is broken"
hits=$(grep -r -a -l -F -f "$strings" "$dir/data" "$dir/server.log" || true)
if [ -n "$hits" ]; then
    echo "$hits" >&2
    for f in $hits; do grep -a -o -F -f "$strings" "$f" | sort | uniq -c | head -5 >&2; done
    die "personal data in plaintext in the files above"
fi
log "plaintext scan: $n personal strings, $files files (heap, indexes, WAL, stats, server log): 0 hits; control string found"
