#!/usr/bin/env bash
# Bulk import: how long `taskforge import` takes to bring a CSV of ROWS tasks into an empty team,
# on SQLite and PostgreSQL, and the server's CPU for it. See bench/README.md. Loopback only; each
# run is bounded in time; the server is killed on exit.
#
# The CSV: ROWS rows, each with a title, a two-sentence description, a status, a priority, a
# due date and one of three labels; every tenth row has a comment. Each run starts a fresh
# database and server; the import runs once per run (RUNS, medians printed) with --batch BATCH.
#
# Environment (all optional):
#   RUNS=3  ROWS=100000  BATCH=1000  BACKENDS="sqlite postgres"  RUN_CAP=600 (seconds per import)
#   PG_HOST=127.0.0.1 PG_PORT=5432 PG_USER=postgres PG_ADMIN_DB=test
#   SKIP_BUILD=1  TASKFORGE_BIN  KEEP_DB=1
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
RUNS=${RUNS:-3}
ROWS=${ROWS:-100000}
BATCH=${BATCH:-1000}
BACKENDS=${BACKENDS:-sqlite postgres}
RUN_CAP=${RUN_CAP:-600}
PG_HOST=${PG_HOST:-127.0.0.1}
PG_PORT=${PG_PORT:-5432}
PG_USER=${PG_USER:-postgres}
PG_ADMIN_DB=${PG_ADMIN_DB:-test}
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
TASKFORGE_BIN=${TASKFORGE_BIN:-$TARGET_DIR/release/taskforge}
DB_PREFIX=taskforge_import

case "$PG_HOST" in
  127.* | localhost | ::1) ;;
  *) echo "PG_HOST must be a loopback address (got $PG_HOST)" >&2; exit 2 ;;
esac

log() { printf '[import] %s\n' "$*" >&2; }

WORK=$(mktemp -d "${TMPDIR:-/tmp}/taskforge-import.XXXXXX")
SERVER_PID=""
# shellcheck source=bench/lib.sh
source "$(dirname "$0")/lib.sh"
trap run_cleanup EXIT
trap 'exit 130' INT TERM

# CPU seconds (user + system) a process has used so far.
cpu_secs() {
  awk -v hz="$(getconf CLK_TCK)" '{ printf "%.2f", ($14 + $15) / hz }' "/proc/$1/stat"
}

# The CSV, once for every run.
make_csv() {
  awk -v rows="$ROWS" 'BEGIN {
    print "title,description,status,priority,due,labels,comments"
    split("todo,in_progress,done", st, ",")
    split("low,medium,high,urgent", pr, ",")
    split("bug,feature,chore", lb, ",")
    for (i = 0; i < rows; i++) {
      comment = (i % 10 == 0) ? "imported note " i : ""
      printf "Imported task %d,\"Migrated from the old tracker, row %d. The parser handles the login form on mobile.\",%s,%s,2027-%02d-%02d,%s,%s\n",
        i, i, st[i % 3 + 1], pr[i % 4 + 1], i % 12 + 1, i % 28 + 1, lb[i % 3 + 1], comment
    }
  }' >"$WORK/tasks.csv"
}

# One run: a fresh database and server, a user and a team, the import; prints
# "<seconds> <server CPU seconds> <tasks>".
run_once() {
  local backend=$1 url email token team started ended cpu0 cpu1 out
  new_db "$backend" || return 1
  start_server "$DB_URL" "import-$backend" || return 1
  url=$SERVER_URL
  email="importer-$RANDOM$RANDOM@example.com"
  token=$(curl -fsS -X POST "$url/api/v1/auth/register" -H 'content-type: application/json' \
    -d "{\"email\":\"$email\",\"password\":\"correct horse battery\",\"displayName\":\"Importer\"}" |
    sed -n 's/.*"accessToken":"\([^"]*\)".*/\1/p')
  team=$(curl -fsS -X POST "$url/api/v1/teams" -H 'content-type: application/json' \
    -H "authorization: Bearer $token" -d '{"name":"Imported"}' |
    sed -n 's/^{"id":"\([^"]*\)".*/\1/p')
  [[ -n "$team" ]] || { log "could not create the team"; return 1; }
  export XDG_CONFIG_HOME="$WORK/config-$backend"
  printf 'correct horse battery\n' | "$TASKFORGE_BIN" login --url "$url" --email "$email" >/dev/null
  cpu0=$(cpu_secs "$SERVER_PID")
  started=$(date +%s.%N)
  out=$(timeout --kill-after=5 "$RUN_CAP" "$TASKFORGE_BIN" import --url "$url" --team "$team" \
    --batch "$BATCH" "$WORK/tasks.csv" 2>"$WORK/import.stderr") ||
    { log "the import failed:"; tail -n 5 "$WORK/import.stderr" >&2; return 1; }
  ended=$(date +%s.%N)
  cpu1=$(cpu_secs "$SERVER_PID")
  log "$out"
  stop_server
  drop_db
  awk -v a="$started" -v b="$ended" -v c0="$cpu0" -v c1="$cpu1" -v n="$ROWS" \
    'BEGIN { printf "%.2f %.2f %d\n", b - a, c1 - c0, n }'
}

median() { sort -n | awk '{ v[NR] = $1 } END { if (NR) print v[int((NR + 1) / 2)] }'; }

if [[ "${SKIP_BUILD:-0}" != 1 ]]; then
  log "building the release binary"
  (cd "$ROOT" && cargo build --release -p taskforge)
fi
[[ -x "$TASKFORGE_BIN" ]] || { log "missing binary $TASKFORGE_BIN"; exit 1; }
if busy_compilers; then
  log "warning: compilers are running on this machine; the figures will be noisy"
fi
make_csv
log "$ROWS rows, $(du -h "$WORK/tasks.csv" | cut -f1) of CSV, batches of $BATCH, $RUNS runs per backend"

for backend in $BACKENDS; do
  if [[ "$backend" == postgres ]] && ! psql_admin 'SELECT 1' >/dev/null 2>&1; then
    log "PostgreSQL at $PG_HOST:$PG_PORT is not reachable: skipping it"
    continue
  fi
  : >"$WORK/$backend.runs"
  for i in $(seq 1 "$RUNS"); do
    log "$backend run $i/$RUNS"
    run_once "$backend" | tee -a "$WORK/$backend.runs" >&2 || { stop_server; drop_db; exit 1; }
  done
  secs=$(cut -d' ' -f1 "$WORK/$backend.runs" | median)
  cpu=$(cut -d' ' -f2 "$WORK/$backend.runs" | median)
  awk -v b="$backend" -v s="$secs" -v c="$cpu" -v n="$ROWS" 'BEGIN {
    printf "%-8s %d tasks in %.2f s (median of runs): %.0f tasks/s; server CPU %.2f s = %.1f us per task\n",
      b, n, s, n / s, c, c * 1e6 / n }'
done
