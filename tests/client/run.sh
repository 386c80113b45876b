#!/usr/bin/env bash
# The Python client test: examples/shop_client.py (psycopg 3 + psycopg_pool) against a running
# cluster that has voucher_ext installed. 32 threads redeem a voucher limited to 25 uses, the
# documented SQLSTATEs are checked, and pooled transactions are checked for tenant-context leaks.
# Then every public function is called with hostile arguments (test_hostile_calls.py).
#   tests/client/run.sh SOCKET_DIR PORT
# Creates a virtualenv in target/venv (once) with psycopg[binary] and psycopg_pool, and a fresh
# database voucher_client on the cluster (connecting as postgres over the Unix socket).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
host=${1:?usage: tests/client/run.sh SOCKET_DIR PORT}
port=${2:?usage: tests/client/run.sh SOCKET_DIR PORT}
db=voucher_client
venv="$root/target/venv"
python=${PYTHON:-python3}
bindir=$("${PG_CONFIG:-/usr/lib/postgresql/15/bin/pg_config}" --bindir)

die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# The virtualenv: created only when missing (a half-made one, without pip, is made again).
if [ ! -x "$venv/bin/python" ] || [ ! -x "$venv/bin/pip" ]; then
    rm -rf "$venv"
    mkdir -p "$root/target"
    "$python" -m venv "$venv" >"$root/target/venv.log" 2>&1 || {
        cat "$root/target/venv.log" >&2
        die "'$python -m venv' failed. On Debian install the python3-venv package" \
            "(scripts/setup.sh does: apt-get install python3-venv), then run this again."
    }
fi
# The client libraries: installed only when they do not import yet.
if ! "$venv/bin/python" -c 'import psycopg, psycopg_pool' 2>/dev/null; then
    "$venv/bin/pip" install --quiet --disable-pip-version-check 'psycopg[binary]' psycopg_pool \
        || die "pip could not install psycopg[binary] and psycopg_pool (is PyPI reachable?)"
fi

# A fresh database with the extension.
psql=("$bindir/psql" -X -q -v ON_ERROR_STOP=1 -h "$host" -p "$port" -U postgres)
"${psql[@]}" -d postgres -c "SET client_min_messages = warning" \
    -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" -c "CREATE DATABASE $db" \
    || die "could not create database $db on $host:$port"
"${psql[@]}" -d "$db" -c "CREATE EXTENSION voucher_ext" \
    || die "CREATE EXTENSION voucher_ext failed: is it installed (scripts/install.sh)?"

# Bytecode would land next to the sources (examples/__pycache__); keep the tree clean.
export PYTHONDONTWRITEBYTECODE=1 VOUCHER_TEST_HOST="$host" VOUCHER_TEST_PORT="$port" VOUCHER_TEST_DB="$db"
"$venv/bin/python" "$here/test_shop_client.py"
# Then every public function with hostile arguments: no XX000, no crash (test_hostile_calls.py).
"$venv/bin/python" "$here/test_hostile_calls.py"
