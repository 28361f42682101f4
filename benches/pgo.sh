#!/usr/bin/env bash
# Builds pgtenant with profile-guided optimisation: an instrumented build serves a training
# workload, and the release build is compiled again with the profile it wrote (branch layout,
# inlining and hot/cold code placement from real traffic). The binary is
# target/pgo/release/pgtenant; `cargo build --release` stays the plain build.
#
#   bash benches/pgo.sh                 # build, train (about a minute), build again
#   PGTENANT_BIN=target/pgo/release/pgtenant bash benches/compare.sh
#
# Training: pgbench through the proxy in session and transaction pooling, with the simple,
# extended and prepared protocols, the TPC-B-like default script (updates, inserts, BEGIN/END),
# a new connection per transaction (-C, SCRAM logins) and a 100-row read; 8 clients, a few
# seconds each. Needs llvm-profdata of rustc's LLVM major version (apt-get llvm-N when missing).
set -euo pipefail
cd "$(dirname "$0")/.."
TRAIN_SECONDS=${TRAIN_SECONDS:-4}

llvm_major=$(rustc -vV | sed -n 's/^LLVM version: \([0-9]*\).*/\1/p')
profdata=$(command -v "llvm-profdata-$llvm_major" || true)
if [ -z "$profdata" ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "llvm-$llvm_major" >/dev/null
  profdata=$(command -v "llvm-profdata-$llvm_major")
fi

raw=$(mktemp -d /tmp/pgtenant-pgo.XXXXXX)
trap 'rm -rf "$raw"' EXIT
RUSTFLAGS="-Cprofile-generate=$raw" cargo build --release --quiet --target-dir target/pgo-gen
BIN=target/pgo-gen/release/pgtenant

source benches/bench-cluster.sh
# (start_bench_cluster sets its own cleanup as the exit trap: the profile directory joins it.)
start_bench_cluster pgo 2 -c max_connections=100
trap 'cleanup_bench_cluster; rm -rf "$raw"' EXIT
cp benches/rows-100.sql "$work/rows-100.sql"
PORT=$(free_port)
write_pgtenant_config "$BIN" "$PORT" "[pool]
size = 10"
add_txn_tenant "$(bench_verifier)"
# The instrumented binary writes its profile when it exits: it is stopped with SIGTERM below
# (a graceful shutdown) before the profile is merged; the cleanup only kills it after a failure.
PGTENANT_LOG=info "$BIN" serve --config "$work/pgtenant.toml" >"$work/pgtenant.log" 2>&1 &
proxy=$!
pids+=("$proxy")
for _ in $(seq 100); do "$PGBIN/pg_isready" -q -h 127.0.0.1 -p "$PORT" && break; sleep 0.1; done

train() { # database, pgbench arguments
  local db=$1; shift
  "$PGBIN/pgbench" -h 127.0.0.1 -p "$PORT" -U bench -n -T "$TRAIN_SECONDS" -j 2 "$@" "$db" >/dev/null
}
for db in bench bench_txn; do
  for mode in simple extended prepared; do
    train "$db" -S -M "$mode" -c 8
    train "$db" -M "$mode" -c 8
  done
  train "$db" -S -C -c 4
  train "$db" -f "$work/rows-100.sql" -c 8
done
kill -TERM "$proxy"
wait "$proxy" || true

"$profdata" merge -o "$raw/pgtenant.profdata" "$raw"
RUSTFLAGS="-Cprofile-use=$raw/pgtenant.profdata" cargo build --release --quiet --target-dir target/pgo
echo "target/pgo/release/pgtenant (profile-guided build)"
