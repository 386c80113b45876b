#!/usr/bin/env bash
# Throwaway PostgreSQL clusters under target/, owned by `postgres` when we are root.
#
#   scripts/cluster.sh start NAME PORT [extra postgres -c settings...]
#   scripts/cluster.sh stop NAME
#
# Data, socket and log live in target/clusters/NAME (see cluster_base); only a Unix socket is
# opened (no TCP),
# and local connections are trusted, so nothing outside this machine can reach it.
source "$(dirname "$0")/common.sh"

cmd=${1:?usage: cluster.sh start|stop NAME [PORT]}
name=${2:?cluster name}
dir="$(cluster_base)/$name"
bin=$(pg_bindir)

case "$cmd" in
start)
    port=${3:?port}
    shift 3
    if [ -f "$dir/data/postmaster.pid" ] && as_pg "$bin/pg_ctl" -D "$dir/data" status >/dev/null 2>&1; then
        as_pg "$bin/pg_ctl" -D "$dir/data" stop -m fast >/dev/null
    fi
    rm -rf "$dir"
    mkdir -p "$dir"
    if is_root; then chown postgres: "$dir"; fi
    as_pg "$bin/initdb" -D "$dir/data" --auth=trust --encoding=UTF8 --locale=C.UTF-8 \
        --username=postgres >"$dir/initdb.log" 2>&1 || { cat "$dir/initdb.log"; die "initdb failed"; }
    opts="-p $port -k $dir -c listen_addresses=''"
    for s in "$@"; do opts="$opts -c $s"; done
    as_pg "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -o "$opts" -w start >/dev/null \
        || { cat "$dir/server.log"; die "the cluster did not start"; }
    ;;
stop)
    if [ -d "$dir/data" ]; then
        as_pg "$bin/pg_ctl" -D "$dir/data" stop -m fast >/dev/null 2>&1 || true
    fi
    ;;
*) die "unknown command $cmd" ;;
esac
