#!/usr/bin/env bash
# Filters, sorts and full-text search of the task list on large teams, on SQLite and PostgreSQL:
# TEAMS teams of TASKS tasks each, then every query kind of `taskforge-bench search run` against
# the first team, as one of its members, with the p99 target (20 ms). See bench/README.md.
# Loopback only; every step is bounded in time; the server is stopped, the PostgreSQL database
# made for the run dropped and the temp dir removed on exit.
#
# Per backend:
#   1. a fresh database and a server on it (its migrations make the schema);
#   2. `search setup` over HTTP: the teams, boards, labels and members (argon2 registrations);
#   3. the server stops; `search seed` writes the tasks straight into the database (sqlite3 / psql:
#      the tasks' own indexes are dropped before and made again after, FTS5 follows through the
#      schema's triggers, the tsvector column is generated), then ANALYZE;
#   4. the server starts again on the seeded database; `search run` per CONCURRENCY value
#      (1 = one client, one request at a time);
#   5. `search explain`: each query kind's SQL under EXPLAIN QUERY PLAN / EXPLAIN (ANALYZE, BUFFERS).
#
# Environment (all optional):
#   TEAMS=11  TASKS=100000 (per team)  REQUESTS=300  WARMUP=20  CONCURRENCY="1 4"  TARGET_MS=20
#   BACKENDS="sqlite postgres"  ONLY=name,name (query kinds whose name contains one of them)
#   EXPLAIN=1 (0: no plans)  SEED=20261205
#   PG_HOST=127.0.0.1 PG_PORT=5432 PG_USER=postgres PG_ADMIN_DB=test   (where to CREATE DATABASE)
#   KEEP_DB=1  keep the temp dir (server logs)
#   KEEP_DATA=1  keep the seeded databases for a later look: the SQLite file and the fixture move to
#     OUT_DIR, the PostgreSQL database is not dropped (its name is in OUT_DIR/postgres-db.txt)
#   SKIP_BUILD=1, TASKFORGE_BIN, BENCH_BIN, OUT_DIR (default target/bench/search-<time>)
# The defaults take about 20 minutes on 2 cores, plus the build.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TEAMS=${TEAMS:-11}
TASKS=${TASKS:-100000}
REQUESTS=${REQUESTS:-300}
WARMUP=${WARMUP:-20}
CONCURRENCY=${CONCURRENCY:-1 4}
TARGET_MS=${TARGET_MS:-20}
BACKENDS=${BACKENDS:-sqlite postgres}
ONLY=${ONLY:-}
EXPLAIN=${EXPLAIN:-1}
SEED=${SEED:-20261205}
PG_HOST=${PG_HOST:-127.0.0.1}
PG_PORT=${PG_PORT:-5432}
PG_USER=${PG_USER:-postgres}
PG_ADMIN_DB=${PG_ADMIN_DB:-test}
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
TASKFORGE_BIN=${TASKFORGE_BIN:-$TARGET_DIR/release/taskforge}
BENCH_BIN=${BENCH_BIN:-$TARGET_DIR/release/taskforge-bench}
OUT_DIR=${OUT_DIR:-$TARGET_DIR/bench/search-$(date -u +%Y%m%dT%H%M%SZ)}
# Caps, seconds: setup (registrations hash passwords), seeding, one measuring run, the plans.
SETUP_CAP=600
SEED_CAP=1800
RUN_CAP=1800
EXPLAIN_CAP=600

case "$PG_HOST" in
  127.* | localhost | ::1) ;;
  *) echo "PG_HOST must be a loopback address (got $PG_HOST)" >&2; exit 2 ;;
esac

log() { printf '[search] %s\n' "$*" >&2; }

WORK=$(mktemp -d "${TMPDIR:-/tmp}/taskforge-bench.XXXXXX")
SERVER_PID=""
# shellcheck source=bench/lib.sh
source "$(dirname "$0")/lib.sh"
DB_PREFIX=taskforge_search_bench
trap run_cleanup EXIT
trap 'exit 130' INT TERM

# capped CAP CMD...: runs CMD in the background (so that a signal reaches the cleanup at once),
# killed after CAP seconds. Its stdin is /dev/null (a background command's): give input by name.
capped() {
  local cap=$1 rc=0
  shift
  timeout --signal=TERM --kill-after=5 "$cap" "$@" &
  BENCH_PID=$!
  wait "$BENCH_PID" || rc=$?
  BENCH_PID=""
  return "$rc"
}

psql_db() {
  PGCONNECT_TIMEOUT=5 timeout 60 psql -h "$PG_HOST" -p "$PG_PORT" -U "$PG_USER" -d "$PG_DB" -v ON_ERROR_STOP=1 -Xq "$@"
}

# seed_sqlite DB: drops the tasks' secondary indexes, inserts every task (the FTS5 triggers fire),
# makes the indexes again and analyzes.
seed_sqlite() {
  local db=$1 indexes drops
  indexes=$(sqlite3 "$db" "SELECT sql || ';' FROM sqlite_master WHERE type = 'index' AND tbl_name IN ('tasks', 'task_labels') AND sql IS NOT NULL")
  drops=$(sqlite3 "$db" "SELECT 'DROP INDEX ' || name || ';' FROM sqlite_master WHERE type = 'index' AND tbl_name IN ('tasks', 'task_labels') AND sql IS NOT NULL")
  # A rollback journal for the load (the server puts WAL back when it opens the file).
  {
    # A page cache of 2 GiB and the file mapped: the FTS5 segment merges re-read the index (with
    # a 256 MiB cache, 11 x 100,000 tasks were not in after 9 minutes; with these, 2.5).
    printf 'PRAGMA journal_mode = DELETE;\nPRAGMA synchronous = OFF;\nPRAGMA cache_size = -2097152;\nPRAGMA mmap_size = 8589934592;\n'
    printf '%s\n' "$drops"
    "$BENCH_BIN" search seed --fixture "$WORK/fixture.json" --backend sqlite \
      --tasks-per-team "$TASKS" --seed "$SEED"
    printf '%s\n' "$indexes"
    printf 'ANALYZE;\n'
  } | sqlite3 -bail "$db" >/dev/null
}

# seed_postgres: the same with COPY; foreign keys are not checked during the load (the generator
# only names the fixture's teams, boards, users and labels), then VACUUM ANALYZE.
seed_postgres() {
  local indexes drops
  indexes=$(psql_db -At -c "SELECT indexdef || ';' FROM pg_indexes WHERE schemaname = 'public' AND tablename IN ('tasks', 'task_labels') AND indexname NOT IN (SELECT conname FROM pg_constraint)")
  drops=$(psql_db -At -c "SELECT 'DROP INDEX ' || indexname || ';' FROM pg_indexes WHERE schemaname = 'public' AND tablename IN ('tasks', 'task_labels') AND indexname NOT IN (SELECT conname FROM pg_constraint)")
  {
    printf 'SET session_replication_role = replica;\n'
    printf '%s\n' "$drops"
    "$BENCH_BIN" search seed --fixture "$WORK/fixture.json" --backend postgres \
      --tasks-per-team "$TASKS" --seed "$SEED"
    printf "SET maintenance_work_mem = '512MB';\n"
    printf '%s\n' "$indexes"
    printf 'VACUUM ANALYZE;\n'
  } | psql -h "$PG_HOST" -p "$PG_PORT" -U "$PG_USER" -d "$PG_DB" -v ON_ERROR_STOP=1 -Xq >/dev/null
}

run_backend() {
  local backend=$1 t0 t1 c
  if [[ "$backend" == postgres ]] && ! psql_admin 'SELECT 1' >/dev/null 2>&1; then
    log "PostgreSQL at $PG_HOST:$PG_PORT (user $PG_USER, db $PG_ADMIN_DB) is not reachable: skipping it"
    return 0
  fi
  new_db "$backend" || return 1
  start_server "$DB_URL" "$backend-setup" || return 1
  log "$backend: setup over HTTP ($TEAMS teams) on $SERVER_URL"
  t0=$(date +%s.%N)
  capped "$SETUP_CAP" "$BENCH_BIN" search setup --url "$SERVER_URL" --fixture "$WORK/fixture.json" \
    --teams "$TEAMS" || return 1
  t1=$(date +%s.%N)
  log "$backend: setup took $(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }') s"
  stop_server

  log "$backend: seeding $TEAMS x $TASKS tasks"
  t0=$(date +%s.%N)
  # In a child shell under `capped`: a signal to this script then stops the load at once
  # (`timeout` signals its whole process group).
  export BENCH_BIN WORK TASKS SEED SEED_CAP PG_HOST PG_PORT PG_USER PG_DB
  export -f seed_sqlite seed_postgres psql_db
  case "$backend" in
    sqlite) capped "$SEED_CAP" bash -c 'seed_sqlite "$WORK/run.db"' || return 1 ;;
    postgres) capped "$SEED_CAP" bash -c seed_postgres || return 1 ;;
  esac
  t1=$(date +%s.%N)
  SEED_SECS[$backend]=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.0f", b - a }')
  log "$backend: seeding (with index builds and ANALYZE) took ${SEED_SECS[$backend]} s"
  case "$backend" in
    sqlite) log "$backend: database file $(du -h "$WORK/run.db" | cut -f1)" ;;
    postgres) log "$backend: database size $(psql_admin "SELECT pg_size_pretty(pg_database_size('$PG_DB'))")" ;;
  esac

  # SQLite: the server indexes the words of tasks written behind its back when it opens the file
  # (minutes for a million tasks) before it listens.
  READY_SECS=${SEEDED_READY_SECS:-1200} start_server "$DB_URL" "$backend" || return 1
  log "$backend: server pid $SERVER_PID at $SERVER_URL"
  if busy_compilers; then
    log "warning: compilers are running on this machine; the figures will be noisy"
  fi
  log "load average before the runs: $(cut -d' ' -f1-3 /proc/loadavg)"
  for c in $CONCURRENCY; do
    capped "$RUN_CAP" "$BENCH_BIN" search run --url "$SERVER_URL" --fixture "$WORK/fixture.json" \
      --requests "$REQUESTS" --warmup "$WARMUP" --concurrency "$c" --target-ms "$TARGET_MS" \
      --only "$ONLY" --label "$backend, $TEAMS teams x $TASKS tasks (seeded in ${SEED_SECS[$backend]} s)" \
      --json-out "$OUT_DIR/$backend-c$c.json" >"$OUT_DIR/$backend-c$c.txt" || return 1
    if ! kill -0 "$SERVER_PID" 2>/dev/null; then
      log "the server died during the $backend run"
      return 1
    fi
  done
  stop_server

  if [[ "$EXPLAIN" == 1 ]]; then
    log "$backend: query plans"
    "$BENCH_BIN" search explain --fixture "$WORK/fixture.json" --backend "$backend" --count \
      --only "$ONLY" >"$WORK/explain.sql"
    case "$backend" in
      sqlite)
        # The FTS5 index is `contentless_delete` (SQLite 3.43): an older shell cannot read it.
        if [[ "$(printf '%s\n' 3.43.0 "$(sqlite3 --version | cut -d' ' -f1)" | sort -V | head -n 1)" != 3.43.0 ]]; then
          echo "sqlite3 $(sqlite3 --version | cut -d' ' -f1) is older than 3.43 and cannot read the search index: no SQLite plans" >"$OUT_DIR/$backend-plans.txt"
        else
          capped "$EXPLAIN_CAP" sqlite3 -readonly "$WORK/run.db" ".read $WORK/explain.sql" >"$OUT_DIR/$backend-plans.txt" 2>&1 || true
        fi
        ;;
      postgres) capped "$EXPLAIN_CAP" psql -h "$PG_HOST" -p "$PG_PORT" -U "$PG_USER" -d "$PG_DB" -XqAt -f "$WORK/explain.sql" >"$OUT_DIR/$backend-plans.txt" 2>&1 || true ;;
    esac
  fi
  if [[ "${KEEP_DATA:-0}" == 1 ]]; then
    cp "$WORK/fixture.json" "$OUT_DIR/fixture.json"
    case "$backend" in
      sqlite) mv "$WORK"/run.db* "$OUT_DIR/" && log "kept $OUT_DIR/run.db" ;;
      postgres) echo "$PG_DB" >"$OUT_DIR/postgres-db.txt" && log "kept PostgreSQL database $PG_DB"; PG_DB="" ;;
    esac
  else
    drop_db
  fi
}

if [[ "${SKIP_BUILD:-0}" != 1 ]]; then
  log "building release binaries"
  (cd "$ROOT" && cargo build --release -p taskforge -p taskforge-bench)
fi
for bin in "$TASKFORGE_BIN" "$BENCH_BIN"; do
  [[ -x "$bin" ]] || { log "missing binary $bin"; exit 1; }
done
for tool in sqlite3 psql; do
  command -v "$tool" >/dev/null || { log "$tool is needed"; exit 1; }
done
mkdir -p "$OUT_DIR"
log "results in $OUT_DIR"
declare -A SEED_SECS=()

status=0
for backend in $BACKENDS; do
  run_backend "$backend" || { status=1; log "$backend failed"; stop_server; drop_db; }
done

echo
echo "GET /api/v1/teams/{teamId}/tasks and /search on $TEAMS teams x $TASKS tasks; latency in ms over loopback, $(nproc) cores"
for backend in $BACKENDS; do
  for c in $CONCURRENCY; do
    [[ -s "$OUT_DIR/$backend-c$c.txt" ]] || continue
    echo
    cat "$OUT_DIR/$backend-c$c.txt"
  done
done
for backend in $BACKENDS; do
  if [[ -s "$OUT_DIR/$backend-plans.txt" ]]; then
    echo
    echo "== $backend query plans (the SQL the server runs, values inlined) =="
    cat "$OUT_DIR/$backend-plans.txt"
  fi
done
exit "$status"
