#!/usr/bin/env bash
# Throughput and latency of POST /api/v1/teams/{teamId}/tasks on SQLite and PostgreSQL.
# See bench/README.md. Loopback only; every run is bounded in time; the server is killed on exit.
#
# Scenarios, per backend, each repeated RUNS times (medians are printed):
#   a  one team,          CONCURRENCY connections, max rate (closed loop)
#   b  MANY_TEAMS teams,  CONCURRENCY connections, max rate (closed loop)
#   c  one team,          CONCURRENCY connections, paced (open loop) at half the median rate of (a)
#
# Environment (all optional):
#   RUNS=3  DURATION=10  WARMUP=2  CONCURRENCY=32  MANY_TEAMS=16  GEN_THREADS=1
#   BACKENDS="sqlite postgres"
#   PG_HOST=127.0.0.1 PG_PORT=5432 PG_USER=postgres PG_ADMIN_DB=test   (where to CREATE DATABASE)
#   KEEP_DB=1        keep the PostgreSQL database and the SQLite file afterwards
#   SKIP_BUILD=1     do not run cargo build (use the binaries already in the target dir)
#   TASKFORGE_BIN, BENCH_BIN   use these binaries instead of target/release/{taskforge,taskforge-bench}
#   OUT_DIR          where the JSON lines of every run go (default target/bench/http-writes-<time>)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
RUNS=${RUNS:-3}
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
CONCURRENCY=${CONCURRENCY:-32}
MANY_TEAMS=${MANY_TEAMS:-16}
GEN_THREADS=${GEN_THREADS:-1}
BACKENDS=${BACKENDS:-sqlite postgres}
PG_HOST=${PG_HOST:-127.0.0.1}
PG_PORT=${PG_PORT:-5432}
PG_USER=${PG_USER:-postgres}
PG_ADMIN_DB=${PG_ADMIN_DB:-test}
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
TASKFORGE_BIN=${TASKFORGE_BIN:-$TARGET_DIR/release/taskforge}
BENCH_BIN=${BENCH_BIN:-$TARGET_DIR/release/taskforge-bench}
OUT_DIR=${OUT_DIR:-$TARGET_DIR/bench/http-writes-$(date -u +%Y%m%dT%H%M%SZ)}
REQUEST_TIMEOUT=10
# Hard cap for one benchmark run: setup + warmup + window + drain + slack.
RUN_CAP=$((WARMUP + DURATION + REQUEST_TIMEOUT + 60))

case "$PG_HOST" in
  127.* | localhost | ::1) ;;
  *) echo "PG_HOST must be a loopback address (got $PG_HOST)" >&2; exit 2 ;;
esac

log() { printf '[http-writes] %s\n' "$*" >&2; }

WORK=$(mktemp -d "${TMPDIR:-/tmp}/taskforge-bench.XXXXXX")
SERVER_PID=""
# shellcheck source=bench/lib.sh
source "$(dirname "$0")/lib.sh"
BENCH_PID=""
PG_DB=""

psql_admin() {
  PGCONNECT_TIMEOUT=5 psql -h "$PG_HOST" -p "$PG_PORT" -U "$PG_USER" -d "$PG_ADMIN_DB" \
    -v ON_ERROR_STOP=1 -Atqc "$1"
}

drop_pg_db() {
  if [[ -n "$PG_DB" && "${KEEP_DB:-0}" != 1 ]]; then
    psql_admin "DROP DATABASE IF EXISTS \"$PG_DB\" WITH (FORCE)" >/dev/null 2>&1 || true
  fi
  PG_DB=""
}

# shellcheck disable=SC2317  # invoked by the EXIT trap
cleanup() {
  if [[ -n "$BENCH_PID" ]]; then
    kill -TERM "$BENCH_PID" 2>/dev/null || true # `timeout` passes it on to the generator
    wait "$BENCH_PID" 2>/dev/null || true
  fi
  stop_server
  drop_pg_db
  if [[ "${KEEP_DB:-0}" == 1 ]]; then
    log "kept $WORK"
  else
    rm -rf "$WORK"
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# bench LABEL RESULTS_FILE ARGS...: one run; appends its JSON line to RESULTS_FILE.
bench() {
  local label=$1 results=$2
  shift 2
  local line rc=0
  # In the background, so that a signal to this script is handled at once (see cleanup).
  timeout --signal=TERM --kill-after=5 "$RUN_CAP" \
    "$BENCH_BIN" --threads "$GEN_THREADS" writes --url "$SERVER_URL" --server-pid "$SERVER_PID" \
    --warmup "$WARMUP" --duration "$DURATION" --timeout "$REQUEST_TIMEOUT" \
    --label "$label" --json "$@" >"$WORK/run.json" &
  BENCH_PID=$!
  wait "$BENCH_PID" || rc=$?
  BENCH_PID=""
  line=$(tail -n 1 "$WORK/run.json")
  if [[ -n "$line" ]]; then
    printf '%s\n' "$line" >>"$results"
    printf '%s\n' "$line" | "$BENCH_BIN" summarize | tail -n 1 | sed 's/^/    /' >&2
  fi
  if ((rc != 0)); then
    log "run $label exited with status $rc"
  fi
  if ! kill -0 "$SERVER_PID" 2>/dev/null; then
    log "the server died during run $label"
    return 1
  fi
}

run_backend() {
  local backend=$1 db_url
  local results="$OUT_DIR/$backend.jsonl"
  case "$backend" in
    sqlite)
      db_url="sqlite://$WORK/taskforge-bench.db"
      ;;
    postgres)
      if ! command -v psql >/dev/null || ! psql_admin 'SELECT 1' >/dev/null 2>&1; then
        log "PostgreSQL at $PG_HOST:$PG_PORT (user $PG_USER, db $PG_ADMIN_DB) is not reachable: skipping it"
        return 0
      fi
      PG_DB="taskforge_bench_$(date +%s)_$$"
      psql_admin "CREATE DATABASE \"$PG_DB\"" >/dev/null
      db_url="postgres://$PG_USER@$PG_HOST:$PG_PORT/$PG_DB"
      ;;
    *)
      log "unknown backend $backend (expected sqlite or postgres)"
      return 1
      ;;
  esac

  start_server "$db_url" "$backend" || return 1
  log "server pid $SERVER_PID at $SERVER_URL ($backend)"
  if busy_compilers; then
    log "warning: compilers are running on this machine; the figures will be noisy"
  fi
  log "load average before the runs: $(cut -d' ' -f1-3 /proc/loadavg)"

  local i
  for i in $(seq 1 "$RUNS"); do
    log "$backend run $i/$RUNS: (a) 1 team, $CONCURRENCY connections, max rate"
    bench a-1team-max "$results" --teams 1 --concurrency "$CONCURRENCY" || return 1
    log "$backend run $i/$RUNS: (b) $MANY_TEAMS teams, $CONCURRENCY connections, max rate"
    bench "b-${MANY_TEAMS}teams-max" "$results" --teams "$MANY_TEAMS" --concurrency "$CONCURRENCY" || return 1
  done

  local max_a rate
  max_a=$("$BENCH_BIN" summarize --label a-1team-max --field /throughput "$results" 2>/dev/null || echo 0)
  rate=$(awk -v x="$max_a" 'BEGIN { r = int(x / 2); print (r > 0 ? r : 0) }')
  if ((rate > 0)); then
    for i in $(seq 1 "$RUNS"); do
      log "$backend run $i/$RUNS: (c) 1 team, $CONCURRENCY connections, paced at $rate req/s"
      bench c-1team-paced "$results" --teams 1 --concurrency "$CONCURRENCY" --rate "$rate" || return 1
    done
  else
    log "no successful max-rate run of (a): skipping the paced scenario (c)"
  fi
  stop_server
  drop_pg_db
}

if [[ "${SKIP_BUILD:-0}" != 1 ]]; then
  log "building release binaries"
  (cd "$ROOT" && cargo build --release -p taskforge -p taskforge-bench)
fi
for bin in "$TASKFORGE_BIN" "$BENCH_BIN"; do
  [[ -x "$bin" ]] || { log "missing binary $bin"; exit 1; }
done
mkdir -p "$OUT_DIR"
log "results (JSON lines) in $OUT_DIR; runs=$RUNS duration=${DURATION}s warmup=${WARMUP}s"

status=0
for backend in $BACKENDS; do
  run_backend "$backend" || { status=1; stop_server; drop_pg_db; }
done

echo
echo "POST /api/v1/teams/{teamId}/tasks, medians of $RUNS runs of ${DURATION} s ($(nproc) cores, generator beside the server)"
echo "columns: tasks/s = 2xx per second; fail = non-2xx + errors + unsent; latency in ms (paced: from the scheduled send);"
echo "         genCPU%/srvCPU% = CPU of the generator/server during the window, in % of one core; srvRSSMiB = server peak RSS"
for backend in $BACKENDS; do
  results="$OUT_DIR/$backend.jsonl"
  [[ -s "$results" ]] || continue
  echo
  echo "== $backend =="
  "$BENCH_BIN" summarize "$results"
done
exit "$status"
