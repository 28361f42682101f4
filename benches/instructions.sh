#!/usr/bin/env bash
# Counts the proxy's user-space instructions per transaction with callgrind: deterministic, so it
# shows a hot-path change that wall-clock benchmarks on a noisy machine cannot.
#
#   bash benches/instructions.sh [path/to/pgtenant]     # default: target/release/pgtenant
#
# Runs pgbench -S (4 clients, session mode) through the proxy under callgrind twice, with 1,000
# and 6,000 transactions per client, and divides the difference by 20,000, so connection set-up
# (SCRAM, backend login) cancels out. Needs valgrind (apt-get install valgrind).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${1:-target/release/pgtenant}
[ -x "$BIN" ] || cargo build --release --quiet
command -v valgrind >/dev/null || { apt-get update -qq && apt-get install -y -qq valgrind >/dev/null; }
PGBIN=$(dirname "$(readlink -f "$(command -v initdb || ls /usr/lib/postgresql/*/bin/initdb | tail -1)")")

work=$(mktemp -d /tmp/pgtenant-instr.XXXXXX)
as_pg() { if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
[ "$(id -u)" -eq 0 ] && chown postgres: "$work"
cleanup() { as_pg "$PGBIN/pg_ctl" -D "$work/data" -m fast stop >/dev/null 2>&1 || true; rm -rf "$work"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
PG_PORT=$(free_port)
export PGPASSWORD=bench-pw
echo "$PGPASSWORD" > "$work/pw"; [ "$(id -u)" -eq 0 ] && chown postgres: "$work/pw"
as_pg "$PGBIN/initdb" -D "$work/data" -U postgres --auth-host=scram-sha-256 --auth-local=trust \
  --pwfile="$work/pw" -E UTF8 --locale=C --no-sync >/dev/null
as_pg "$PGBIN/pg_ctl" -D "$work/data" -l "$work/pg.log" -w -o "-p $PG_PORT -k $work -c listen_addresses=127.0.0.1" start >/dev/null
"$PGBIN/psql" -qX -h 127.0.0.1 -p "$PG_PORT" -U postgres -c "CREATE ROLE bench LOGIN PASSWORD '$PGPASSWORD'" \
  -c "CREATE DATABASE bench OWNER bench" postgres
"$PGBIN/pgbench" -i -q -s 1 -h 127.0.0.1 -p "$PG_PORT" -U bench bench 2>/dev/null
VERIFIER=$(printf '%s' "$PGPASSWORD" | "$BIN" hash-password)

instructions() { # transactions per client -> total Ir
  local port; port=$(free_port)
  cat > "$work/pgtenant.toml" <<TOML
[[listeners]]
address = "127.0.0.1:$port"
[[servers]]
name = "local"
host = "127.0.0.1"
port = $PG_PORT
user = "bench"
password = "$PGPASSWORD"
[[tenants]]
slug = "bench"
server = "local"
[[tenants.users]]
name = "bench"
password_hash = "$VERIFIER"
TOML
  PGTENANT_LOG=${PGTENANT_LOG:-info} valgrind --tool=callgrind --callgrind-out-file="$work/cg.out" \
    "$BIN" serve --config "$work/pgtenant.toml" >"$work/valgrind.log" 2>&1 &
  local vpid=$!
  for _ in $(seq 100); do "$PGBIN/pg_isready" -q -h 127.0.0.1 -p "$port" && break; sleep 0.2; done
  "$PGBIN/pgbench" -h 127.0.0.1 -p "$port" -U bench -S -c 4 -t "$1" bench >/dev/null 2>&1
  kill -INT "$vpid"; wait "$vpid" || true
  callgrind_annotate "$work/cg.out" 2>/dev/null | awk '/PROGRAM TOTALS/ { gsub(",", "", $1); print $1 }'
}
small=$(instructions 1000)
large=$(instructions 6000)
echo "pgtenant user-space instructions per transaction (pgbench -S, session mode): $(( (large - small) / 20000 ))"
