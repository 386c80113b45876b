#!/usr/bin/env bash
# The benchmark suite (`make bench`): builds and installs the release build, starts a private
# cluster tuned for benchmarking (durability settings left at PostgreSQL's defaults), runs
# bench/bench.py and stops the cluster. Prints one results table, also written to
# bench/results/latest.md (quick mode: bench/results/quick.tmp/latest.md). See bench/README.md.
#
#   BENCH_RUNS=5          runs per side of every comparison
#   BENCH_SECONDS=10      seconds per pgbench run
#   BENCH_QUICK=1         smoke test: 2 runs x 3 s, smaller data
#   BENCH_SKIP_INSTALL=1  reuse the extension that is installed (no build)
#   BENCH_ONLY=a,b        re-run only these cases, merged into the last results (bench.py --list)
#   BENCH_CLUSTER=bench, BENCH_PORT=54340   the private cluster's name and port
source "$(dirname "$0")/common.sh"
cd "$ROOT"
NAME=${BENCH_CLUSTER:-bench}
PORT=${BENCH_PORT:-54340}
start=$(now)

"$ROOT/scripts/setup.sh"
# A tool the suite runs, from Debian when it is missing.
need_tool() {
    command -v "$1" >/dev/null && return
    is_root || die "$1 is missing: install $2 (or run this as root)"
    log "installing $2"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq "$2" >/dev/null 2>&1 \
        || { apt-get update -qq && apt-get install -y -qq "$2" >/dev/null; } \
        || die "apt-get install $2 failed"
}
need_tool gnuplot gnuplot-nox  # the client-count picture
need_tool valgrind valgrind    # callgrind counts the instructions of rows P1i-Pgi (case instr)

sock="$(cluster_base)/$NAME"
lib="$("$PG_CONFIG" --pkglibdir)/voucher_ext.so"
# The seal worker is off here: row 7 seals and verifies a log of a known size itself, and a
# worker sealing in the background would race it (and add load the rows do not measure).
settings=(shared_preload_libraries=voucher_ext shared_buffers=2GB max_wal_size=16GB
          checkpoint_timeout=30min max_connections=120 voucher.seal_interval=0)
trap '"$ROOT/scripts/cluster.sh" stop "$NAME"' EXIT
# The library is shared with whoever else installs into this PostgreSQL (make test installs a
# debug build): start the cluster only once the installed library is the release build we made.
for attempt in 1 2 3; do
    if [ "${BENCH_SKIP_INSTALL:-0}" != 1 ]; then
        log "building and installing the release build"
        "$ROOT/scripts/install.sh" --release
    fi
    log "starting the benchmark cluster $NAME (port $PORT, socket $sock)"
    "$ROOT/scripts/cluster.sh" start "$NAME" "$PORT" "${settings[@]}"
    # A running postmaster keeps the library it loaded (installs replace the file, not its contents).
    if [ "${BENCH_SKIP_INSTALL:-0}" = 1 ] || cmp -s "$lib" "$ROOT/target/release/libvoucher_ext.so"; then
        break
    fi
    [ "$attempt" = 3 ] && die "the installed voucher_ext.so keeps changing under us (another install running?)"
    log "the installed library changed before the cluster started (another install?): again"
done
log "setup: $(elapsed "$start")"

status=0
python3 "$ROOT/bench/bench.py" --host "$sock" --port "$PORT" || status=$?
log "make bench took $(elapsed "$start")"
exit $status
