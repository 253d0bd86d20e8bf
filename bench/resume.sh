#!/usr/bin/env bash
# WebSocket resume: a socket comes back after missing MISSED activities of its team and subscribes
# with `since`; the replay is timed RUNS times, each on a new socket. See bench/README.md.
# Loopback only; every run is bounded in time; the server is stopped (and the PostgreSQL database
# made for the run dropped) on exit.
#
# Backends: SQLite (a file in a temp dir); with PG=1 also PostgreSQL: a fresh database made with
# CREATE DATABASE through TASKFORGE_BENCH_DATABASE_URL (which must point at a loopback server),
# dropped afterwards. The server keeps its default realtime settings (queue limit, replay window).
#
# Environment (all optional):
#   RUNS=5  MISSED=10000  WRITERS=8  GEN_THREADS=1  RUN_TIMEOUT=60 (s, per resume)
#   PG=1    also run on PostgreSQL
#   TASKFORGE_BENCH_DATABASE_URL=postgres://postgres@127.0.0.1:5432/test   (where to CREATE DATABASE)
#   KEEP_DB=1        keep the temp dir (SQLite file, server logs) and the PostgreSQL database
#   SKIP_BUILD=1     do not run cargo build (use the binaries already in the target dir)
#   TASKFORGE_BIN, BENCH_BIN   use these binaries instead of target/release/{taskforge,taskforge-bench}
#   OUT_DIR          where the JSON lines go (default target/bench/resume-<time>)
#   Server settings such as TASKFORGE_LOG pass through.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
RUNS=${RUNS:-5}
MISSED=${MISSED:-10000}
WRITERS=${WRITERS:-8}
GEN_THREADS=${GEN_THREADS:-1}
RUN_TIMEOUT=${RUN_TIMEOUT:-60}
PG=${PG:-0}
ADMIN_URL=${TASKFORGE_BENCH_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/test}
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
TASKFORGE_BIN=${TASKFORGE_BIN:-$TARGET_DIR/release/taskforge}
BENCH_BIN=${BENCH_BIN:-$TARGET_DIR/release/taskforge-bench}
OUT_DIR=${OUT_DIR:-$TARGET_DIR/bench/resume-$(date -u +%Y%m%dT%H%M%SZ)}
# Hard cap of one generator run: setup, creating the tasks (at 25/s or more), the resumes, slack.
RUN_CAP=$((120 + MISSED / 25 + RUNS * (RUN_TIMEOUT + 10)))

log() { printf '[resume] %s\n' "$*" >&2; }

WORK=$(mktemp -d "${TMPDIR:-/tmp}/taskforge-resume.XXXXXX")
SERVER_PID=""
# shellcheck source=bench/lib.sh
source "$(dirname "$0")/lib.sh"
BENCH_PID=""
PG_DB=""

# The PostgreSQL URL's parts: scheme://[user[:password]@]host[:port]/database[?params]
PG_SCHEME=${ADMIN_URL%%://*}
PG_REST=${ADMIN_URL#*://}
PG_AUTHORITY=${PG_REST%%/*}
PG_PARAMS=""
[[ "$PG_REST" == *\?* ]] && PG_PARAMS="?${PG_REST#*\?}"
PG_HOSTPORT=${PG_AUTHORITY##*@}
if [[ "$PG_HOSTPORT" == \[* ]]; then
  PG_HOST=${PG_HOSTPORT%%]*}]
else
  PG_HOST=${PG_HOSTPORT%%:*}
fi

psql_admin() {
  PGCONNECT_TIMEOUT=5 timeout 60 psql "$ADMIN_URL" -v ON_ERROR_STOP=1 -Atqc "$1"
}

drop_pg_db() {
  if [[ -n "$PG_DB" && "${KEEP_DB:-0}" != 1 ]]; then
    psql_admin "DROP DATABASE IF EXISTS \"$PG_DB\" WITH (FORCE)" >/dev/null 2>&1 || true
  elif [[ -n "$PG_DB" ]]; then
    log "kept database $PG_DB"
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

# run_backend NAME DATABASE_URL: one server, one generator run of RUNS resumes; prints its report.
run_backend() {
  local name=$1 db_url=$2 rc=0 problems
  start_server "$db_url" "$name" || return 1
  log "$name: server pid $SERVER_PID at $SERVER_URL; $MISSED missed activities, $RUNS resumes (load average $(cut -d' ' -f1-3 /proc/loadavg))"
  if busy_compilers; then
    log "warning: compilers are running on this machine; the figures will be noisy"
  fi
  # In the background, so that a signal to this script is handled at once (see cleanup).
  timeout --signal=TERM --kill-after=5 "$RUN_CAP" \
    "$BENCH_BIN" --threads "$GEN_THREADS" resume --url "$SERVER_URL" --server-pid "$SERVER_PID" \
    --missed "$MISSED" --runs "$RUNS" --writers "$WRITERS" --timeout "$RUN_TIMEOUT" \
    --label "$name" --json-out "$OUT_DIR/resume.jsonl" >"$WORK/$name.report" 2>"$WORK/$name.gen-stderr" &
  BENCH_PID=$!
  wait "$BENCH_PID" || rc=$?
  BENCH_PID=""
  echo
  cat "$WORK/$name.report"
  if ((rc != 0)); then
    log "$name: the generator exited with status $rc (4 = lost, duplicate, misordered or late activities, errors, a cut socket or a timeout); its stderr:"
    tail -n 20 "$WORK/$name.gen-stderr" >&2 || true
  fi
  problems=$(grep -cE ' (WARN|ERROR) ' "$SERVER_ERR" || true)
  if ((problems > 0)); then
    log "$name: the server logged $problems WARN/ERROR lines; the first ones:"
    grep -E ' (WARN|ERROR) ' "$SERVER_ERR" | head -n 5 >&2
  fi
  if ! kill -0 "$SERVER_PID" 2>/dev/null; then
    log "$name: the server died; its stderr:"
    tail -n 20 "$SERVER_ERR" >&2
    SERVER_PID=""
    return 1
  fi
  stop_server
  return "$rc"
}

if [[ "${SKIP_BUILD:-0}" != 1 ]]; then
  log "building release binaries"
  (cd "$ROOT" && cargo build --release -p taskforge -p taskforge-bench)
fi
for bin in "$TASKFORGE_BIN" "$BENCH_BIN"; do
  [[ -x "$bin" ]] || { log "missing binary $bin"; exit 1; }
done
mkdir -p "$OUT_DIR"
log "JSON lines in $OUT_DIR/resume.jsonl; runs=$RUNS missed=$MISSED writers=$WRITERS generator threads=$GEN_THREADS"

status=0
run_backend sqlite "sqlite://$WORK/resume.db" || status=1

if [[ "$PG" == 1 ]]; then
  case "$PG_HOST" in
    127.* | localhost | ::1 | \[::1\]) ;;
    *) log "TASKFORGE_BENCH_DATABASE_URL must point at a loopback server (got host $PG_HOST)"; exit 2 ;;
  esac
  if ! psql_admin 'SELECT 1' >/dev/null 2>&1; then
    log "PostgreSQL at $PG_HOST is not reachable; skipping it"
    status=1
  else
    PG_DB="taskforge_resume_$(date +%s)_$$"
    psql_admin "CREATE DATABASE \"$PG_DB\"" >/dev/null
    run_backend postgres "$PG_SCHEME://$PG_AUTHORITY/$PG_DB$PG_PARAMS" || status=1
    drop_pg_db
  fi
fi
exit "$status"
