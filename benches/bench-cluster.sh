# Sourced by the benchmark scripts: a throwaway cluster with a pgbench database `bench` owned by
# role `bench`, and the pgtenant config that fronts it. Defines PGBIN, work, PG_PORT, PASSWORD,
# pids (killed on exit), as_pg, free_port, write_pgtenant_config, add_txn_tenant, bench_verifier
# and write_pgbouncer_config.
#
#   start_bench_cluster NAME SCALE [extra postgres -c options]

PGBIN=$(dirname "$(readlink -f "$(command -v initdb || ls /usr/lib/postgresql/*/bin/initdb | tail -1)")")
PASSWORD=bench-pw
export PGPASSWORD=$PASSWORD
pids=()

as_pg() { if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

cleanup_bench_cluster() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  as_pg "$PGBIN/pg_ctl" -D "$work/data" -m fast stop >/dev/null 2>&1 || true
  rm -rf "$work"
}

start_bench_cluster() {
  local name=$1 scale=$2; shift 2
  work=$(mktemp -d "/tmp/pgtenant-$name.XXXXXX")
  [ "$(id -u)" -eq 0 ] && chown postgres: "$work"
  trap cleanup_bench_cluster EXIT
  PG_PORT=$(free_port)
  echo "$PASSWORD" > "$work/pw"; [ "$(id -u)" -eq 0 ] && chown postgres: "$work/pw"
  as_pg "$PGBIN/initdb" -D "$work/data" -U postgres --auth-host=scram-sha-256 --auth-local=trust \
    --pwfile="$work/pw" -E UTF8 --locale=C --no-sync >/dev/null
  as_pg "$PGBIN/pg_ctl" -D "$work/data" -l "$work/pg.log" -w \
    -o "-p $PG_PORT -k $work -c listen_addresses=127.0.0.1 $*" start >/dev/null
  "$PGBIN/psql" -qX -h 127.0.0.1 -p "$PG_PORT" -U postgres -c "CREATE ROLE bench LOGIN PASSWORD '$PASSWORD'" \
    -c "CREATE DATABASE bench OWNER bench" postgres
  "$PGBIN/pgbench" -i -q -s "$scale" -h 127.0.0.1 -p "$PG_PORT" -U bench bench 2>/dev/null
}

# add_txn_tenant VERIFIER: appends tenant `bench_txn` (the same database, transaction pooling,
# user bench with that SCRAM verifier) to $work/pgtenant.toml.
add_txn_tenant() {
  cat >> "$work/pgtenant.toml" <<TOML
[[tenants]]
slug = "bench_txn"
server = "local"
database = "bench"
pool_mode = "transaction"
[[tenants.users]]
name = "bench"
password_hash = "$1"
TOML
}

# write_pgtenant_config BINARY PORT [extra TOML before the servers]: $work/pgtenant.toml with
# tenant `bench` (user bench) on the cluster.
write_pgtenant_config() {
  local verifier
  verifier=$(printf '%s' "$PASSWORD" | "$1" hash-password)
  cat > "$work/pgtenant.toml" <<TOML
[[listeners]]
address = "127.0.0.1:$2"
${3:-}
[[servers]]
name = "local"
host = "127.0.0.1"
port = $PG_PORT
user = "bench"
password = "$PASSWORD"
[[tenants]]
slug = "bench"
server = "local"
[[tenants.users]]
name = "bench"
password_hash = "$verifier"
TOML
}

# bench_verifier: the SCRAM verifier Postgres stores for role bench.
bench_verifier() {
  "$PGBIN/psql" -qAtX -h 127.0.0.1 -p "$PG_PORT" -U postgres \
    -c "SELECT rolpassword FROM pg_authid WHERE rolname = 'bench'" postgres
}

# write_pgbouncer_config PORT POOL_SIZE DATABASE_LINES: $work/pgbouncer.ini and its auth file,
# which holds bench's verifier, not its password (no PBKDF2 per login, as for pgtenant).
write_pgbouncer_config() {
  cat > "$work/pgbouncer.ini" <<INI
[databases]
$3
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $1
unix_socket_dir =
auth_type = scram-sha-256
auth_file = $work/userlist.txt
default_pool_size = $2
max_client_conn = 1000
logfile = $work/pgbouncer.log
INI
  echo "\"bench\" \"$(bench_verifier)\"" > "$work/userlist.txt"
  if [ "$(id -u)" -eq 0 ]; then chown postgres: "$work/pgbouncer.ini" "$work/userlist.txt"; fi
}
