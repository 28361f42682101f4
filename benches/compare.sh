#!/usr/bin/env bash
# Compares pgbench -S through nothing (direct), pgbouncer and pgtenant, in one run on this
# machine, and prints tps, average latency and each proxy's CPU time per transaction, for
# session pooling, transaction pooling (simple, extended, prepared protocols), a new
# connection per transaction (-C) in transaction pooling, and (row txn-rows) a 100-row read
# (benches/rows-100.sql) in transaction pooling.
#
#   bash benches/compare.sh                      # 3 runs of 15 s per row, medians
#   DURATION=30 REPEAT=5 CLIENTS=16 bash benches/compare.sh
#   ROWS="txn-simple connect" bash benches/compare.sh   # a subset of rows
#   PGTENANT_BIN=/tmp/pgtenant-before bash benches/compare.sh   # another build (A/B runs)
#   PGO=1 bash benches/compare.sh                # the profile-guided build (benches/pgo.sh)
#   DIRECT=0 REPEAT=12 ROWS="txn-simple connect" bash benches/compare.sh  # proxies only, more pairs
#   RATE=8000 ROWS="txn-simple" bash benches/compare.sh  # pgbench -R: the same load for both,
#                                                # below what either can take (CPU at equal work)
#
# Each run puts the two proxies back to back; the summary pairs them run by run and counts the
# runs pgtenant won (less CPU per transaction, more tps), with a one-sided sign test: the chance
# of winning that many of the pairs or more if neither proxy were better.
#
# Installs pgbouncer with apt-get when missing; builds pgtenant in release mode (with PGO=1,
# through benches/pgo.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-15}
REPEAT=${REPEAT:-3}
CLIENTS=${CLIENTS:-16}
CONNECT_CLIENTS=${CONNECT_CLIENTS:-8}
SCALE=${SCALE:-10}
ROWS=${ROWS:-"session-simple session-extended session-prepared txn-simple txn-extended txn-prepared connect txn-rows"}
POOL=$((CLIENTS + 4))

if ! command -v pgbouncer >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq pgbouncer >/dev/null
fi
if [ -n "${PGTENANT_BIN:-}" ]; then
  BIN=$PGTENANT_BIN
elif [ -n "${PGO:-}" ]; then
  bash benches/pgo.sh >/dev/null
  BIN=target/pgo/release/pgtenant
else
  cargo build --release --quiet
  BIN=target/release/pgtenant
fi

source benches/bench-cluster.sh
start_bench_cluster bench "$SCALE" -c max_connections=200 -c shared_buffers=256MB
cp benches/rows-100.sql "$work/rows-100.sql"
BOUNCER_PORT=$(free_port); TENANT_PORT=$(free_port)

# Both proxies hold the SCRAM verifier, not the password: neither runs PBKDF2 per login.
VERIFIER=$(bench_verifier)
write_pgbouncer_config "$BOUNCER_PORT" "$POOL" \
  "bench = host=127.0.0.1 port=$PG_PORT dbname=bench pool_mode=session
bench_txn = host=127.0.0.1 port=$PG_PORT dbname=bench pool_mode=transaction"
# Each proxy runs in its own session, as a service or a daemon does (pgbouncer -d calls setsid),
# not in this script's, where pgbench runs: with the kernel's autogroup scheduling
# (/proc/sys/kernel/sched_autogroup_enabled) a session is a scheduling group, and a proxy in the
# load generator's group shares one group's CPU share with it. SHARED_SESSION=1 keeps both
# proxies in this script's session (how the tables before 2026-12-02's eighth session were taken).
own_session=(setsid)
[ -n "${SHARED_SESSION:-}" ] && own_session=()
as_postgres=(); [ "$(id -u)" -eq 0 ] && as_postgres=(runuser -u postgres --)
"${own_session[@]}" "${as_postgres[@]}" pgbouncer -q "$work/pgbouncer.ini" >/dev/null 2>&1 &
pids+=($!)

write_pgtenant_config "$BIN" "$TENANT_PORT" "[proxy]
worker_threads = ${WORKERS:-1}
log_connections = ${LOG_CONNECTIONS:-true}
[pool]
size = $POOL"
add_txn_tenant "$VERIFIER"
PGTENANT_LOG=${PGTENANT_LOG:-info} "${own_session[@]}" "$BIN" serve --config "$work/pgtenant.toml" >"$work/pgtenant.log" 2>&1 &
pids+=($!)
sleep 1
BOUNCER_PID=$(pgrep -f "^pgbouncer .*$work/pgbouncer.ini" | head -1)
TENANT_PID=$(pgrep -f "serve --config $work/pgtenant.toml" | head -1)
pids+=("$BOUNCER_PID")

# A process's time on a CPU in nanoseconds, all threads: the scheduler's exact count
# (/proc/PID/task/*/schedstat). The user and system ticks of /proc/PID/stat are samples taken
# at each clock tick; a proxy that runs in bursts of tens of microseconds collects only a few
# dozen of them in a -C run, so their count alone varies by ±15% from run to run. (A thread that
# ends between the two readings drops out of the sum: both proxies run on one thread here.)
cpu_ns() { { cat /proc/"$1"/task/*/schedstat 2>/dev/null || true; } | awk '{ s += $1 } END { printf "%.0f", s }'; }
# Context switches of a process's main thread (where both proxies' event loops run): voluntary
# (it waited for events) and involuntary (preempted, mostly by a peer its send woke).
switches() { awk '/^voluntary_ctxt_switches/ {v = $2} /^nonvoluntary_ctxt_switches/ {n = $2} END {print v, n}' "/proc/$1/status"; }
split_ticks() { awk '{printf "user=%s sys=%s ", $14, $15}' "/proc/$1/stat"; awk '/^voluntary_ctxt_switches/ {print "switches=" $2}' "/proc/$1/status"; }

# pgbench arguments of a row: workload, protocol mode, clients, and -C for the connection row.
row_args() {
  case $1 in
    *-simple) echo "-S -M simple -c $CLIENTS" ;;
    *-extended) echo "-S -M extended -c $CLIENTS" ;;
    *-prepared) echo "-S -M prepared -c $CLIENTS" ;;
    *-rows) echo "-f $work/rows-100.sql -M simple -c $CLIENTS" ;;
    connect) echo "-S -M simple -C -c $CONNECT_CLIENTS" ;;
  esac
}
row_db() { case $1 in session-*) echo bench ;; *) echo bench_txn ;; esac; }

run_row() { # target port pid row
  local name=$1 port=$2 pid=$3 label=$4
  local db; db=$(row_db "$label")
  [ "$name" = direct ] && db=bench
  local before=0 after=0
  local vol0=0 inv0=0 vol1=0 inv1=0
  [ "$pid" != "-" ] && read -r vol0 inv0 < <(switches "$pid")
  [ "$pid" != "-" ] && before=$(cpu_ns "$pid")
  if [ -n "${PROFILE:-}" ] && [ "$name" = "$PROFILE" ] && [ "$label" = "${PROFILE_ROW:-session-simple}" ]; then
    perf record -q -e "${PERF_EVENT:-cpu-clock}" ${PERF_ARGS:-} -g -p "$pid" -o "/tmp/perf-$name.data" -- sleep "$DURATION" >/dev/null 2>&1 &
  fi
  if [ -n "${STRACE:-}" ] && [ "$pid" != "-" ] && [ "$label" = "${STRACE_ROW:-session-simple}" ]; then
    timeout 3 strace ${STRACE_ARGS:--c} -f -p "$pid" -o "/tmp/strace-$name.txt" >/dev/null 2>&1 &
  fi
  local out ok=1
  # shellcheck disable=SC2046
  out=$("$PGBIN/pgbench" -h 127.0.0.1 -p "$port" -U bench $(row_args "$label") ${RATE:+-R "$RATE"} -j 2 -T "$DURATION" "$db" 2>&1) || ok=0
  [ "$pid" != "-" ] && after=$(cpu_ns "$pid")
  [ "$pid" != "-" ] && read -r vol1 inv1 < <(switches "$pid")
  if [ -n "${SPLIT:-}" ] && [ "$pid" != "-" ]; then echo "$name $(split_ticks "$pid")" >&2; fi
  local txns tps lat failed
  txns=$(sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p' <<<"$out")
  failed=$(sed -n 's/^number of failed transactions: \([0-9]*\).*/\1/p' <<<"$out")
  tps=$(sed -n 's/^tps = \([0-9.]*\).*/\1/p' <<<"$out")
  lat=$(sed -n 's/^latency average = \([0-9.]*\) ms/\1/p' <<<"$out")
  if [ "$ok" -eq 0 ] || [ "${failed:-0}" != 0 ] || [ -z "$txns" ]; then
    echo "$name $label failed: $(grep -m1 -i error <<<"$out" || tail -1 <<<"$out")" >&2
    echo "$name $label fail - - ${RUN:-0}" >> "$work/results"
    return
  fi
  local cpu="-"
  if [ "$pid" != "-" ] && [ "$txns" -gt 0 ]; then
    cpu=$(awk -v t=$((after - before)) -v n="$txns" 'BEGIN { printf "%.1f", t / 1000 / n }')
  fi
  echo "$name $label ${tps:-0} ${lat:-0} ${cpu} ${RUN:-0}" >> "$work/results"
  if [ -n "${VERBOSE:-}" ]; then echo "run ${RUN:-0}: $name $label tps ${tps:-0} cpu ${cpu}" >&2; fi
  if [ -n "${SWITCHES:-}" ] && [ "$pid" != "-" ]; then
    awk -v v=$((vol1 - vol0)) -v i=$((inv1 - inv0)) -v n="$txns" -v who="$name $label" -v r="${RUN:-0}" \
      'BEGIN { printf "run %s: %s switches per txn: waited %.3f, preempted %.3f\n", r, who, v / n, i / n }' >&2
  fi
}

echo
echo "pgbench -S, $CLIENTS clients ($CONNECT_CLIENTS with -C), ${DURATION}s per run, median of $REPEAT runs"
echo "(proxies back to back in each run, order alternating), scale $SCALE, pool size $POOL;"
echo "$(nproc) cores, $(uname -m), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs);"
where="their own sessions"; [ -n "${SHARED_SESSION:-}" ] && where="pgbench's session"
echo "proxies in $where, autogroup scheduling $(cat /proc/sys/kernel/sched_autogroup_enabled 2>/dev/null || echo unknown)"
echo
for label in $ROWS; do
  for i in $(seq "$REPEAT"); do
    RUN=$i
    if [ "${DIRECT:-1}" != 0 ]; then run_row direct "$PG_PORT" - "$label"; fi
    # Alternate which proxy goes first, so neither always runs on a warmer machine.
    if [ $((i % 2)) -eq 1 ]; then
      run_row pgbouncer "$BOUNCER_PORT" "$BOUNCER_PID" "$label"
      run_row pgtenant "$TENANT_PORT" "$TENANT_PID" "$label"
    else
      run_row pgtenant "$TENANT_PORT" "$TENANT_PID" "$label"
      run_row pgbouncer "$BOUNCER_PORT" "$BOUNCER_PID" "$label"
    fi
  done
done
python3 - "$work/results" "$ROWS" <<'PY'
import math, statistics, sys
rows, runs = {}, {}
for line in open(sys.argv[1]):
    name, label, tps, lat, cpu, run = line.split()
    r = rows.setdefault((name, label), {"tps": [], "lat": [], "cpu": [], "failed": 0})
    if tps == "fail":
        r["failed"] += 1
        continue
    r["tps"].append(float(tps)); r["lat"].append(float(lat))
    if cpu != "-":
        r["cpu"].append(float(cpu))
        runs.setdefault((label, run), {})[name] = (float(cpu), float(tps))
med = lambda v: statistics.median(v) if v else None
print("| pooling     | protocol | target    | tps    | avg latency (ms) | proxy CPU µs/txn |")
print("|-------------|----------|-----------|--------|------------------|------------------|")
labels = sys.argv[2].split()
for label in labels:
    pooling, proto = {"connect": ("transaction", "-C"), }.get(label, (None, None)) if label == "connect" else (
        "session" if label.startswith("session") else "transaction", label.split("-")[1])
    for name in ("direct", "pgbouncer", "pgtenant"):
        r = rows.get((name, label))
        if not r: continue
        if not r["tps"]:
            print(f"| {pooling:<11} | {proto:<8} | {name:<9} | failed | {'-':>16} | {'-':>16} |")
            continue
        cpu = med(r["cpu"])
        print(f"| {pooling:<11} | {proto:<8} | {name:<9} | {med(r['tps']):6.0f} | {med(r['lat']):16.3f} | {'-' if cpu is None else f'{cpu:.1f}':>16} |")
print()
for label in labels:
    b, t = rows.get(("pgbouncer", label)), rows.get(("pgtenant", label))
    if not (b and t and b["tps"] and t["tps"]):
        if t and t["tps"]:
            print(f"{label}: pgbouncer failed, pgtenant {med(t['tps']):.0f} tps")
        continue
    # Each run pairs the two proxies back to back, so their ratio cancels drift between runs.
    pairs = [v for (l, _), v in runs.items() if l == label and len(v) == 2]
    cpu = sorted(v["pgtenant"][0] / v["pgbouncer"][0] for v in pairs)
    tps = sorted(v["pgtenant"][1] / v["pgbouncer"][1] for v in pairs)
    n = len(pairs)
    if n == 0:  # no run where both proxies got through
        print(f"{label}: pgtenant/pgbouncer tps {med(t['tps'])/med(b['tps']):.2f}, no paired runs")
        continue
    # One-sided sign test: P(at least k wins of n) when each pair is a coin toss.
    p = lambda k: sum(math.comb(n, i) for i in range(k, n + 1)) / 2 ** n
    cpu_wins, tps_wins = sum(r < 1 for r in cpu), sum(r > 1 for r in tps)
    print(f"{label}: pgtenant/pgbouncer tps {med(t['tps'])/med(b['tps']):.2f}, CPU per txn {med(t['cpu'])/med(b['cpu']):.2f}"
          f" (paired runs: CPU median {med(cpu):.2f}, range {cpu[0]:.2f}-{cpu[-1]:.2f}, less CPU in {cpu_wins}/{n}, p={p(cpu_wins):.3f};"
          f" tps median {med(tps):.2f}, range {tps[0]:.2f}-{tps[-1]:.2f}, more tps in {tps_wins}/{n}, p={p(tps_wins):.3f})")
PY
