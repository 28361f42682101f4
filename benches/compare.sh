#!/usr/bin/env bash
# Compares pgbench -S through nothing (direct), pgbouncer and pgtenant, in one run on this
# machine, and prints tps, average latency and each proxy's CPU time per transaction.
#
#   bash benches/compare.sh                      # 3 runs of 15 s per row, medians
#   DURATION=30 REPEAT=5 CLIENTS=16 bash benches/compare.sh
#
# Installs pgbouncer with apt-get when missing; builds pgtenant in release mode.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-15}
REPEAT=${REPEAT:-3}
CLIENTS=${CLIENTS:-16}
SCALE=${SCALE:-10}

if ! command -v pgbouncer >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq pgbouncer >/dev/null
fi
cargo build --release --quiet

source benches/bench-cluster.sh
start_bench_cluster bench "$SCALE" -c max_connections=200 -c shared_buffers=256MB
BOUNCER_PORT=$(free_port); TENANT_PORT=$(free_port)

cat > "$work/pgbouncer.ini" <<INI
[databases]
bench = host=127.0.0.1 port=$PG_PORT dbname=bench
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $BOUNCER_PORT
unix_socket_dir =
auth_type = scram-sha-256
auth_file = $work/userlist.txt
pool_mode = session
default_pool_size = $((CLIENTS + 4))
max_client_conn = 1000
logfile = $work/pgbouncer.log
INI
echo "\"bench\" \"$PASSWORD\"" > "$work/userlist.txt"
[ "$(id -u)" -eq 0 ] && chown postgres: "$work/pgbouncer.ini" "$work/userlist.txt"
as_pg pgbouncer -q "$work/pgbouncer.ini" >/dev/null 2>&1 &
pids+=($!)

write_pgtenant_config target/release/pgtenant "$TENANT_PORT" "[proxy]
worker_threads = ${WORKERS:-1}
[pool]
size = $((CLIENTS + 4))"
PGTENANT_LOG=${PGTENANT_LOG:-info} target/release/pgtenant serve --config "$work/pgtenant.toml" >"$work/pgtenant.log" 2>&1 &
pids+=($!)
sleep 1
BOUNCER_PID=$(pgrep -f "^pgbouncer .*$work/pgbouncer.ini" | head -1)
TENANT_PID=$(pgrep -f "pgtenant serve --config $work/pgtenant.toml" | head -1)
pids+=("$BOUNCER_PID")

ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
split_ticks() { awk '{print "user=" $14 " sys=" $15}' "/proc/$1/stat"; }
CLK_TCK=$(getconf CLK_TCK)

row() { # name port pid mode [extra pgbench flags]
  local name=$1 port=$2 pid=$3 mode=$4; shift 4
  local before=0 after=0
  [ "$pid" != "-" ] && before=$(ticks "$pid")
  if [ -n "${PROFILE:-}" ] && [ "$name" = "$PROFILE" ] && [ "$mode" = simple ]; then
    perf record -q -e cpu-clock -g -p "$pid" -o "/tmp/perf-$name.data" -- sleep "$DURATION" >/dev/null 2>&1 &
  fi
  if [ -n "${STRACE:-}" ] && [ "$pid" != "-" ] && [ "$mode" = simple ]; then
    timeout 3 strace ${STRACE_ARGS:--c} -f -p "$pid" -o "/tmp/strace-$name.txt" >/dev/null 2>&1 &
  fi
  local out
  out=$("$PGBIN/pgbench" -h 127.0.0.1 -p "$port" -U bench -S -M "$mode" -c "$CLIENTS" -j 2 -T "$DURATION" "$@" bench 2>&1) || { echo "$name $mode failed: $(tail -3 <<<"$out")" >&2; cat "$work/pgtenant.log" >&2; }
  [ "$pid" != "-" ] && after=$(ticks "$pid")
  [ -n "${SPLIT:-}" ] && [ "$pid" != "-" ] && echo "$name $(split_ticks "$pid")" >&2
  local txns tps lat
  txns=$(sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p' <<<"$out")
  tps=$(sed -n 's/^tps = \([0-9.]*\).*/\1/p' <<<"$out")
  lat=$(sed -n 's/^latency average = \([0-9.]*\) ms/\1/p' <<<"$out")
  local cpu="-"
  if [ "$pid" != "-" ] && [ -n "$txns" ] && [ "$txns" -gt 0 ]; then
    cpu=$(awk -v t=$((after - before)) -v n="$txns" -v hz="$CLK_TCK" 'BEGIN { printf "%.1f", t * 1000000 / hz / n }')
  fi
  echo "$name $mode ${tps:-0} ${lat:-0} ${cpu} ${RUN:-0}" >> "$work/results"
}

echo
echo "pgbench -S, $CLIENTS clients, ${DURATION}s per run, median of $REPEAT interleaved runs (proxy order alternating), scale $SCALE,"
echo "session pooling; $(nproc) cores, $(uname -m), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo
for mode in simple extended prepared; do
  for i in $(seq "$REPEAT"); do
    RUN=$i
    row direct "$PG_PORT" - "$mode"
    # Alternate which proxy goes first, so neither always runs on a warmer machine.
    if [ $((i % 2)) -eq 1 ]; then
      row pgbouncer "$BOUNCER_PORT" "$BOUNCER_PID" "$mode"
      row pgtenant "$TENANT_PORT" "$TENANT_PID" "$mode"
    else
      row pgtenant "$TENANT_PORT" "$TENANT_PID" "$mode"
      row pgbouncer "$BOUNCER_PORT" "$BOUNCER_PID" "$mode"
    fi
  done
done
python3 - "$work/results" <<'PY'
import statistics, sys
rows, runs = {}, {}
for line in open(sys.argv[1]):
    name, mode, tps, lat, cpu, run = line.split()
    r = rows.setdefault((name, mode), {"tps": [], "lat": [], "cpu": []})
    r["tps"].append(float(tps)); r["lat"].append(float(lat))
    if cpu != "-":
        r["cpu"].append(float(cpu))
        runs.setdefault((mode, run), {})[name] = float(cpu)
med = lambda v: statistics.median(v) if v else None
print("| target    | protocol | tps    | avg latency (ms) | proxy CPU µs/txn |")
print("|-----------|----------|--------|------------------|------------------|")
for mode in ("simple", "extended", "prepared"):
    for name in ("direct", "pgbouncer", "pgtenant"):
        r = rows.get((name, mode))
        if not r: continue
        cpu = med(r["cpu"])
        print(f"| {name:<9} | {mode:<8} | {med(r['tps']):6.0f} | {med(r['lat']):16.3f} | {'-' if cpu is None else f'{cpu:.1f}':>16} |")
print()
for mode in ("simple", "extended", "prepared"):
    b, t = rows.get(("pgbouncer", mode)), rows.get(("pgtenant", mode))
    if b and t and med(b["cpu"]) and med(b["tps"]):
        # Each run pairs the two proxies back to back, so their ratio cancels drift between runs.
        paired = sorted(v["pgtenant"] / v["pgbouncer"] for (m, _), v in runs.items()
                        if m == mode and len(v) == 2)
        print(f"{mode}: pgtenant/pgbouncer tps {med(t['tps'])/med(b['tps']):.2f}, CPU per txn {med(t['cpu'])/med(b['cpu']):.2f}"
              f" (paired runs: median {med(paired):.2f}, range {paired[0]:.2f}-{paired[-1]:.2f})")
PY
