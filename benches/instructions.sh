#!/usr/bin/env bash
# Counts the proxy's user-space instructions per transaction with callgrind: deterministic, so it
# shows a hot-path change that wall-clock benchmarks on a noisy machine cannot.
#
#   bash benches/instructions.sh [path/to/pgtenant]     # default: target/release/pgtenant
#   POOL_MODE=transaction bash benches/instructions.sh  # transaction pooling
#   TARGET=pgbouncer POOL_MODE=transaction bash benches/instructions.sh  # the same for pgbouncer
#   SCRIPT=rows.sql bash benches/instructions.sh        # a pgbench script instead of -S
#   CLIENTS=16 PGBENCH_ARGS="-M extended" bash benches/instructions.sh  # more clients, other args
#   KEEP=1 VALGRIND_ARGS=--cache-sim=yes bash benches/instructions.sh  # also cache misses; keeps
#                                                    # /tmp/cg-1000.out and /tmp/cg-6000.out
#   CONNECT=1 CLIENTS=8 POOL_MODE=transaction bash benches/instructions.sh  # per new connection:
#                                                    # pgbench -C, 200 and 700 per client
#
# Runs pgbench -S (CLIENTS clients, default 4; session mode) through the proxy under callgrind
# twice, with 1,000 and 6,000 transactions per client, and divides the difference by the
# 5,000 x CLIENTS transactions between them, so connection set-up (SCRAM, backend login) cancels
# out. Needs valgrind (apt-get install valgrind).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${1:-target/release/pgtenant}
[ -x "$BIN" ] || cargo build --release --quiet
command -v valgrind >/dev/null || { apt-get update -qq && apt-get install -y -qq valgrind >/dev/null; }
source benches/bench-cluster.sh
start_bench_cluster instr 1
WORKLOAD=-S
CLIENTS=${CLIENTS:-4}
if [ -n "${SCRIPT:-}" ]; then
  cp "$SCRIPT" "$work/script.sql" && chmod 644 "$work/script.sql" && WORKLOAD="-f $work/script.sql"
fi
if [ "${TARGET:-pgtenant}" = pgbouncer ] && ! command -v pgbouncer >/dev/null; then
  apt-get update -qq && apt-get install -y -qq pgbouncer >/dev/null
fi

instructions() { # transactions per client -> total Ir
  local port; port=$(free_port)
  local run=("$BIN" serve --config "$work/pgtenant.toml")
  if [ "${TARGET:-pgtenant}" = pgbouncer ]; then
    write_pgbouncer_config "$port" 20 \
      "bench = host=127.0.0.1 port=$PG_PORT dbname=bench pool_mode=${POOL_MODE:-session}"
    run=(pgbouncer "$work/pgbouncer.ini")
  else
    write_pgtenant_config "$BIN" "$port" "[pool]
mode = \"${POOL_MODE:-session}\""
  fi
  # (pgbouncer refuses to run as root: as_pg runs it, and valgrind, as postgres.)
  local as=(); [ "${TARGET:-pgtenant}" = pgbouncer ] && as=(as_pg)
  # shellcheck disable=SC2086
  PGTENANT_LOG=${PGTENANT_LOG:-info} "${as[@]}" valgrind --tool=callgrind \
    --callgrind-out-file="$work/cg.out" ${VALGRIND_ARGS:-} "${run[@]}" >"$work/valgrind.log" 2>&1 &
  # valgrind's own process (not runuser's, whose command line also names the output file).
  local vpid=""
  for _ in $(seq 100); do
    vpid=$(pgrep -f "^[^ ]*valgrind[^ ]* --tool=callgrind --callgrind-out-file=$work/cg.out") && break
    sleep 0.1
  done
  for _ in $(seq 100); do "$PGBIN/pg_isready" -q -h 127.0.0.1 -p "$port" && break; sleep 0.2; done
  # shellcheck disable=SC2086
  "$PGBIN/pgbench" -h 127.0.0.1 -p "$port" -U bench $WORKLOAD -c "$CLIENTS" ${PGBENCH_ARGS:-} -t "$1" bench >/dev/null 2>&1
  kill -INT "$vpid"; while kill -0 "$vpid" 2>/dev/null; do sleep 0.2; done
  [ -n "${KEEP:-}" ] && cp "$work/cg.out" "/tmp/cg-$1.out"
  callgrind_annotate "$work/cg.out" 2>/dev/null | awk '/PROGRAM TOTALS/ { gsub(",", "", $1); print $1 }'
}
if [ -n "${CONNECT:-}" ]; then
  # A login per transaction costs about 30 times a relayed one: fewer transactions, same precision.
  PGBENCH_ARGS="${PGBENCH_ARGS:-} -C"; SMALL=200; LARGE=700; WHAT="new connection (pgbench -C)"
else
  SMALL=1000; LARGE=6000; WHAT="transaction"
fi
small=$(instructions $SMALL)
large=$(instructions $LARGE)
echo "${TARGET:-pgtenant} user-space instructions per $WHAT (pgbench ${SCRIPT:--S}, ${POOL_MODE:-session} mode): $(( (large - small) / ((LARGE - SMALL) * CLIENTS) ))"
