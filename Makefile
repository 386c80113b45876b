# The two commands that matter, each doing its own set-up on a fresh machine:
#   make demo    build, install, start a private cluster, run examples/demo.sql (make demo-stop ends it)
#   make test    every test layer, in order; non-zero on any failure
PG_CONFIG ?= /usr/lib/postgresql/15/bin/pg_config
export PG_CONFIG

.PHONY: demo demo-stop test install setup fmt clippy clean

demo:
	scripts/demo.sh

demo-stop:
	scripts/cluster.sh stop demo

test:
	scripts/test.sh

# Install into the PostgreSQL that PG_CONFIG belongs to (a DBA's own server).
install: setup
	scripts/install.sh --release

setup:
	scripts/setup.sh

fmt:
	cargo fmt

clippy:
	cargo clippy --all-targets -- -D warnings

clean:
	-scripts/cluster.sh stop demo
	-scripts/cluster.sh stop test
	cargo clean

# The benchmark suite: one results table, also in bench/results/latest.md (see bench/README.md).
# `make bench QUICK=1`: every row with fewer and shorter runs (at most 15 minutes), for checking
# a change; the full mode is the record.
# PHONY on its own line: the bench/ directory would otherwise make the target look up to date.
.PHONY: bench
bench:
	BENCH_QUICK=$(if $(filter 1,$(QUICK)),1,$${BENCH_QUICK:-0}) scripts/bench.sh
