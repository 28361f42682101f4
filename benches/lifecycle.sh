#!/usr/bin/env bash
# Times the tenant lifecycle at scale on a throwaway cluster: `pgtenant tenant create` for
# TENANTS schema-mode tenants (one process each, as a DBA's script would run it), then
# `pgtenant migrate --all` of a 3-file migration across them with --jobs 1 and --jobs 4.
#
#   bash benches/lifecycle.sh                 # 1,000 tenants
#   TENANTS=100 bash benches/lifecycle.sh
set -euo pipefail
cd "$(dirname "$0")/.."
TENANTS=${TENANTS:-1000}
cargo build --release --quiet
source benches/bench-cluster.sh
start_bench_cluster lifecycle 1 -c max_connections=200
BIN=target/release/pgtenant
export PGTENANT_CATALOG_URL="postgresql://postgres:$PASSWORD@127.0.0.1:$PG_PORT/postgres"
export PGTENANT_LOG=warn
$BIN catalog migrate >/dev/null
echo "$PASSWORD" | $BIN server add local --host 127.0.0.1 --port "$PG_PORT" --admin-user postgres >/dev/null

migrations=$work/migrations
mkdir -p "$migrations"
echo "CREATE TABLE items (id serial PRIMARY KEY, note text NOT NULL);" > "$migrations/0001_items.sql"
echo "CREATE INDEX items_note ON items (note);" > "$migrations/0002_index.sql"
echo "ALTER TABLE items ADD COLUMN created_at timestamptz NOT NULL DEFAULT now();" > "$migrations/0003_created.sql"

seconds() { python3 -c 'import time; print(time.monotonic())'; }
elapsed() { python3 -c "print(f'{$2 - $1:.1f}')"; }

start=$(seconds)
for i in $(seq "$TENANTS"); do
  $BIN tenant create "t$i" --server local --isolation schema >/dev/null
done
create_s=$(elapsed "$start" "$(seconds)")

# Both runs start from the same state: version 0, three files to apply.
reset_versions() {
  PGOPTIONS="-c client_min_messages=warning" "$PGBIN/psql" -qAtX -h 127.0.0.1 -p "$PG_PORT" -U postgres -d pgtenant_schemas -c \
    "DO \$\$ DECLARE s text; BEGIN FOR s IN SELECT nspname FROM pg_namespace WHERE nspname ~ '^t[0-9]+\$' LOOP
       EXECUTE format('DROP TABLE IF EXISTS %I.items, %I.pgtenant_migrations', s, s); END LOOP; END \$\$" >/dev/null
}
declare -A migrate_s
for jobs in 1 4; do
  reset_versions
  start=$(seconds)
  $BIN migrate --dir "$migrations" --all --jobs "$jobs" 2>/dev/null | tail -1 >&2
  migrate_s[$jobs]=$(elapsed "$start" "$(seconds)")
done

echo
echo "$TENANTS schema-mode tenants on one local Postgres 15; $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo
echo "| step | time (s) | per tenant (ms) |"
echo "|------|----------|-----------------|"
for row in "tenant create (one process per tenant)|$create_s" \
           "migrate --all, 3 files, --jobs 1|${migrate_s[1]}" \
           "migrate --all, 3 files, --jobs 4|${migrate_s[4]}"; do
  name=${row%|*}; s=${row#*|}
  echo "| $name | $s | $(python3 -c "print(f'{$s * 1000 / $TENANTS:.1f}')") |"
done
