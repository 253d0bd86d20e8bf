#!/usr/bin/env bash
# Webhook delivery: deliveries/s after a disabled stretch, lag from commit to arrival at steady
# write rates, and the catch-up after the receiver was down, on SQLite and PostgreSQL. The
# receiver runs inside the generator (`taskforge-bench webhooks`). See bench/README.md.
# Loopback only; every run is bounded in time; the server is stopped (and the PostgreSQL database
# made for the run dropped) on exit.
#
# Each run gets a fresh database and a fresh server with TASKFORGE_WEBHOOK_ALLOW_PRIVATE=true (the
# receiver is http://127.0.0.1) and otherwise the default webhook settings. Labels:
#   drain          TASKS tasks written by WRITERS connections with the webhook disabled, then enabled
#   lag-<R>        R tasks/s for LAG_SECS s, for R in LAG_RATES
#   outage-<V>     the receiver answers 503 for OUTAGE_SECS s at OUTAGE_RATE tasks/s, then 200;
#                  V in OUTAGE_VARIANTS: `default` (TASKFORGE_WEBHOOK_RETRY_MAX unset: 10m) or
#                  `max<D>` (TASKFORGE_WEBHOOK_RETRY_MAX=<D>, e.g. max30s)
# drain and lag run RUNS rounds, the outages OUTAGE_RUNS each.
#
# Environment (all optional):
#   RUNS=3  TASKS=5000  WRITERS=4  LAG_RATES="50 200"  LAG_SECS=20
#   OUTAGE_SECS=60  OUTAGE_RATE=50  OUTAGE_VARIANTS="default max30s"  OUTAGE_RUNS=1
#   MODES="drain lag outage"  BACKENDS="sqlite postgres"  GEN_THREADS=1  VERIFY=1 (check signatures)
#   PG_HOST=127.0.0.1 PG_PORT=5432 PG_USER=postgres PG_ADMIN_DB=test   (where to CREATE DATABASE)
#   KEEP_DB=1  keep the temp dir with each run's server log (databases are dropped after each run)
#   SKIP_BUILD=1, TASKFORGE_BIN, BENCH_BIN, OUT_DIR (default target/bench/webhooks-<time>)
# The defaults take about 12 minutes, plus the build.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
RUNS=${RUNS:-3}
TASKS=${TASKS:-5000}
WRITERS=${WRITERS:-4}
LAG_RATES=${LAG_RATES:-50 200}
LAG_SECS=${LAG_SECS:-20}
OUTAGE_SECS=${OUTAGE_SECS:-60}
OUTAGE_RATE=${OUTAGE_RATE:-50}
OUTAGE_VARIANTS=${OUTAGE_VARIANTS:-default max30s}
OUTAGE_RUNS=${OUTAGE_RUNS:-1}
MODES=${MODES:-drain lag outage}
BACKENDS=${BACKENDS:-sqlite postgres}
GEN_THREADS=${GEN_THREADS:-1}
VERIFY=${VERIFY:-1}
PG_HOST=${PG_HOST:-127.0.0.1}
PG_PORT=${PG_PORT:-5432}
PG_USER=${PG_USER:-postgres}
PG_ADMIN_DB=${PG_ADMIN_DB:-test}
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
TASKFORGE_BIN=${TASKFORGE_BIN:-$TARGET_DIR/release/taskforge}
BENCH_BIN=${BENCH_BIN:-$TARGET_DIR/release/taskforge-bench}
OUT_DIR=${OUT_DIR:-$TARGET_DIR/bench/webhooks-$(date -u +%Y%m%dT%H%M%SZ)}
# How long a generator waits for the deliveries after the writes (drain, lag).
WAIT=120
# After an outage: the next retry comes at most RETRY_MAX (10 min by default) after the last
# failure, but after OUTAGE_SECS of failures it is due within about OUTAGE_SECS more (the
# backoff doubles from 1 s); plus the drain.
OUTAGE_WAIT=$((OUTAGE_SECS + 90))

case "$PG_HOST" in
  127.* | localhost | ::1) ;;
  *) echo "PG_HOST must be a loopback address (got $PG_HOST)" >&2; exit 2 ;;
esac

log() { printf '[webhooks] %s\n' "$*" >&2; }

WORK=$(mktemp -d "${TMPDIR:-/tmp}/taskforge-bench.XXXXXX")
SERVER_PID=""
# shellcheck source=bench/lib.sh
source "$(dirname "$0")/lib.sh"
DB_PREFIX=taskforge_bench_wh
trap run_cleanup EXIT
trap 'exit 130' INT TERM

# one_run LABEL ROUND CAP [ENV=VALUE ...] -- GENERATOR ARGS...: a fresh database and server, one
# generator run (at most CAP seconds); its JSON line goes to OUT_DIR/BACKEND.jsonl.
one_run() {
  local label=$1 round=$2 cap=$3 rc=0 line
  shift 3
  local env=()
  while [[ $# -gt 0 && "$1" != "--" ]]; do
    env+=("$1")
    shift
  done
  shift
  new_db "$BACKEND"
  start_server "$DB_URL" "$BACKEND-$label-$round" TASKFORGE_WEBHOOK_ALLOW_PRIVATE=true \
    ${env[@]+"${env[@]}"} || { drop_db; return 1; }
  local compilers=no
  busy_compilers && compilers=yes
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$(date -u +%H:%M:%S)" "$label" "$round" \
    "$(cut -d' ' -f1-3 /proc/loadavg)" "$compilers" "$(nproc)" >>"$OUT_DIR/$BACKEND.load.tsv"
  log "$BACKEND $label round $round (load $(cut -d' ' -f1 /proc/loadavg), compilers running: $compilers)"
  local verify=()
  [[ "$VERIFY" == 1 ]] && verify=(--verify)
  # In the background, so that a signal to this script is handled at once (see cleanup).
  timeout --signal=TERM --kill-after=5 "$cap" \
    "$BENCH_BIN" --threads "$GEN_THREADS" webhooks --url "$SERVER_URL" \
    --server-pid "$SERVER_PID" --writers "$WRITERS" --label "$label" --round "$round" --json \
    ${verify[@]+"${verify[@]}"} "$@" >"$WORK/run.json" &
  BENCH_PID=$!
  wait "$BENCH_PID" || rc=$?
  BENCH_PID=""
  line=$(tail -n 1 "$WORK/run.json")
  if [[ -n "$line" ]]; then
    printf '%s\n' "$line" >>"$OUT_DIR/$BACKEND.jsonl"
    printf '%s\n' "$line" | "$BENCH_BIN" summarize | tail -n 1 | sed 's/^/    /' >&2
  fi
  if ((rc != 0)); then
    log "run $label exited with status $rc; the server's last log lines:"
    tail -n 5 "$SERVER_ERR" >&2 || true
  fi
  if ! kill -0 "$SERVER_PID" 2>/dev/null; then
    log "the server died during run $label"
    rc=1
  fi
  stop_server
  drop_db
  return "$rc"
}

run_backend() {
  BACKEND=$1
  local round rate variant retry
  if [[ "$BACKEND" == postgres ]] && { ! command -v psql >/dev/null || ! psql_admin 'SELECT 1' >/dev/null 2>&1; }; then
    log "PostgreSQL at $PG_HOST:$PG_PORT (user $PG_USER, db $PG_ADMIN_DB) is not reachable: skipping it"
    return 0
  fi
  printf 'time\tlabel\tround\tload1 load5 load15\tcompilers\tcores\n' >"$OUT_DIR/$BACKEND.load.tsv"
  for round in $(seq 1 "$RUNS"); do
    if [[ " $MODES " == *" drain "* ]]; then
      one_run drain "$round" $((60 + WAIT + TASKS / 50)) -- --mode drain --tasks "$TASKS" \
        --wait "$WAIT" || return 1
    fi
    if [[ " $MODES " == *" lag "* ]]; then
      for rate in $LAG_RATES; do
        one_run "lag-$rate" "$round" $((60 + LAG_SECS + WAIT)) -- --mode lag --rate "$rate" \
          --duration "$LAG_SECS" --wait "$WAIT" || return 1
      done
    fi
  done
  if [[ " $MODES " == *" outage "* ]]; then
    for round in $(seq 1 "$OUTAGE_RUNS"); do
      for variant in $OUTAGE_VARIANTS; do
        case "$variant" in
          default) retry=() ;;
          max*) retry=("TASKFORGE_WEBHOOK_RETRY_MAX=${variant#max}") ;;
          *) log "unknown outage variant $variant (default or max<duration>)"; return 1 ;;
        esac
        one_run "outage-$variant" "$round" $((60 + OUTAGE_SECS + OUTAGE_WAIT)) \
          ${retry[@]+"${retry[@]}"} -- --mode outage --rate "$OUTAGE_RATE" \
          --down "$OUTAGE_SECS" --wait "$OUTAGE_WAIT" || return 1
      done
    done
  fi
}

if [[ "${SKIP_BUILD:-0}" != 1 ]]; then
  log "building release binaries"
  (cd "$ROOT" && cargo build --release -p taskforge -p taskforge-bench)
fi
for bin in "$TASKFORGE_BIN" "$BENCH_BIN"; do
  [[ -x "$bin" ]] || { log "missing binary $bin"; exit 1; }
done
mkdir -p "$OUT_DIR"
log "results (JSON lines) in $OUT_DIR; modes: $MODES; runs=$RUNS, outages $OUTAGE_RUNS x ($OUTAGE_VARIANTS)"

status=0
for backend in $BACKENDS; do
  run_backend "$backend" || { status=1; stop_server; drop_db; }
done

echo
echo "Webhook deliveries to a receiver in the generator: medians of $RUNS runs (outages: $OUTAGE_RUNS)"
echo "($(nproc) cores, generator beside the server; load averages per run in $OUT_DIR/<backend>.load.tsv)"
for backend in $BACKENDS; do
  results="$OUT_DIR/$backend.jsonl"
  [[ -s "$results" ]] || continue
  echo
  echo "== $backend =="
  "$BENCH_BIN" summarize "$results"
done
exit "$status"
