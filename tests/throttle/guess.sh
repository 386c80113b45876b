#!/usr/bin/env bash
# The guessing test: one client guesses random codes as fast as it can while another redeems
# valid codes for other customers, then a flood of bad API keys against authenticate.
# Checks that the guesser is locked out after at most the threshold, that every honest
# redemption succeeds, that the audit log grows by a bounded number of rows, and that a valid
# key is still accepted during a key flood. Prints what it measured.
#   tests/throttle/guess.sh SOCKET_DIR PORT
# Uses the virtualenv of tests/client (target/venv, made there if missing) and a fresh database
# voucher_throttle on the cluster (connecting as postgres over the Unix socket).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
host=${1:?usage: tests/throttle/guess.sh SOCKET_DIR PORT}
port=${2:?usage: tests/throttle/guess.sh SOCKET_DIR PORT}
db=voucher_throttle
venv="$root/target/venv"
bindir=$("${PG_CONFIG:-/usr/lib/postgresql/15/bin/pg_config}" --bindir)

die() { printf 'error: %s\n' "$*" >&2; exit 1; }

if [ ! -x "$venv/bin/python" ] || [ ! -x "$venv/bin/pip" ]; then
    rm -rf "$venv" && mkdir -p "$root/target"
    "${PYTHON:-python3}" -m venv "$venv" >"$root/target/venv.log" 2>&1 \
        || { cat "$root/target/venv.log" >&2; die "python3 -m venv failed (install python3-venv)"; }
fi
if ! "$venv/bin/python" -c 'import psycopg, psycopg_pool' 2>/dev/null; then
    "$venv/bin/pip" install --quiet --disable-pip-version-check 'psycopg[binary]' psycopg_pool \
        || die "pip could not install psycopg[binary] and psycopg_pool"
fi

psql=("$bindir/psql" -X -q -v ON_ERROR_STOP=1 -h "$host" -p "$port" -U postgres)
"${psql[@]}" -d postgres -c "SET client_min_messages = warning" \
    -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" -c "CREATE DATABASE $db" \
    || die "could not create database $db"
"${psql[@]}" -d "$db" -c "CREATE EXTENSION voucher_ext" || die "CREATE EXTENSION failed"

PYTHONDONTWRITEBYTECODE=1 VOUCHER_TEST_HOST="$host" VOUCHER_TEST_PORT="$port" \
    VOUCHER_TEST_DB="$db" "$venv/bin/python" "$here/guess.py"
