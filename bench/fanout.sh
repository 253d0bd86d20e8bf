#!/usr/bin/env bash
# WebSocket fanout: task.created activities of one team delivered to many /realtime sockets.
# See bench/README.md. Loopback only; every run is bounded in time; the server is killed on exit.
#
# Scenarios, each repeated RUNS times on a fresh server with a fresh SQLite file (medians printed):
#   n1000-max      1000 sockets,  2000 events, as fast as the writers go
#   n10000-max    10000 sockets,   500 events, as fast as the writers go
#   n1000-paced    1000 sockets,  20 events/s for PACED_SECS s (open loop)
#   n10000-paced  10000 sockets,   4 events/s for PACED_SECS s (open loop)
#
# Environment (all optional):
#   RUNS=3  PACED_SECS=15  GEN_THREADS=1  WRITERS=4  USERS=20  DELIVERY_TIMEOUT=30
#   SCENARIOS="n1000-max n10000-max n1000-paced n10000-paced"   (a subset, in this order)
#   WS_QUEUE_LIMIT=4096   the server's TASKFORGE_WS_QUEUE_LIMIT (its default, 1024, is below the
#                         2000 events of n1000-max: a socket lagging that far would be cut)
#   KEEP_DB=1        keep the temp dir (SQLite files, server logs) afterwards
#   SKIP_BUILD=1     do not run cargo build (use the binaries already in the target dir)
#   TASKFORGE_BIN, BENCH_BIN   use these binaries instead of target/release/{taskforge,taskforge-bench}
#   OUT_DIR          where the JSON lines of every run go (default target/bench/fanout-<time>)
#   Server settings such as TASKFORGE_LOG pass through.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
RUNS=${RUNS:-3}
PACED_SECS=${PACED_SECS:-15}
GEN_THREADS=${GEN_THREADS:-1}
WRITERS=${WRITERS:-4}
USERS=${USERS:-20}
DELIVERY_TIMEOUT=${DELIVERY_TIMEOUT:-30}
SCENARIOS=${SCENARIOS:-n1000-max n10000-max n1000-paced n10000-paced}
WS_QUEUE_LIMIT=${WS_QUEUE_LIMIT:-4096}
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
TASKFORGE_BIN=${TASKFORGE_BIN:-$TARGET_DIR/release/taskforge}
BENCH_BIN=${BENCH_BIN:-$TARGET_DIR/release/taskforge-bench}
OUT_DIR=${OUT_DIR:-$TARGET_DIR/bench/fanout-$(date -u +%Y%m%dT%H%M%SZ)}
# Hard cap for one benchmark run: setup + sockets + load + drain timeout + slack.
RUN_CAP=$((PACED_SECS + DELIVERY_TIMEOUT + 240))

log() { printf '[fanout] %s\n' "$*" >&2; }

WORK=$(mktemp -d "${TMPDIR:-/tmp}/taskforge-fanout.XXXXXX")
SERVER_PID=""
# shellcheck source=bench/lib.sh
source "$(dirname "$0")/lib.sh"
BENCH_PID=""

# shellcheck disable=SC2317  # invoked by the EXIT trap
cleanup() {
  if [[ -n "$BENCH_PID" ]]; then
    kill -TERM "$BENCH_PID" 2>/dev/null || true # `timeout` passes it on to the generator
    wait "$BENCH_PID" 2>/dev/null || true
  fi
  stop_server
  if [[ "${KEEP_DB:-0}" == 1 ]]; then
    log "kept $WORK"
  else
    rm -rf "$WORK"
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Both the server and the generator hold one file descriptor per socket.
ulimit -Sn "$(ulimit -Hn)" 2>/dev/null || true
NOFILE=$(ulimit -Sn)

# scenario_args NAME: the generator's arguments for a scenario.
scenario_args() {
  case "$1" in
    n1000-max) echo "--sockets 1000 --events 2000" ;;
    n10000-max) echo "--sockets 10000 --events 500" ;;
    n1000-paced) echo "--sockets 1000 --rate 20 --events $((20 * PACED_SECS))" ;;
    n10000-paced) echo "--sockets 10000 --rate 4 --events $((4 * PACED_SECS))" ;;
    *) return 1 ;;
  esac
}

# run_one NAME RUN RESULTS_FILE: one run on its own server; appends its JSON line to RESULTS_FILE.
run_one() {
  local name=$1 run=$2 results=$3 args line rc=0
  args=$(scenario_args "$name") || { log "unknown scenario $name"; return 1; }
  start_server "sqlite://$WORK/$name-$run.db" "$name-$run" TASKFORGE_WS_QUEUE_LIMIT="$WS_QUEUE_LIMIT" || return 1
  log "$name run $run/$RUNS: $args (server pid $SERVER_PID at $SERVER_URL; load average $(cut -d' ' -f1-3 /proc/loadavg))"
  # In the background, so that a signal to this script is handled at once (see cleanup).
  # shellcheck disable=SC2086  # $args is a list of options
  timeout --signal=TERM --kill-after=5 "$RUN_CAP" \
    "$BENCH_BIN" --threads "$GEN_THREADS" fanout --url "$SERVER_URL" --server-pid "$SERVER_PID" \
    --writers "$WRITERS" --users "$USERS" --timeout "$DELIVERY_TIMEOUT" \
    --label "$name" --json $args >"$WORK/run.json" 2>"$WORK/run.stderr" &
  BENCH_PID=$!
  wait "$BENCH_PID" || rc=$?
  BENCH_PID=""
  line=$(tail -n 1 "$WORK/run.json")
  if [[ -n "$line" ]]; then
    printf '%s\n' "$line" >>"$results"
    printf '%s\n' "$line" | "$BENCH_BIN" summarize | tail -n 1 | sed 's/^/    /' >&2
  fi
  if ((rc != 0)); then
    log "run $name #$run exited with status $rc (4 = lost/duplicate/unexpected deliveries or cut sockets); its stderr:"
    grep -v '^fanout: ' "$WORK/run.stderr" | tail -n 20 >&2 || true
  fi
  local problems
  problems=$(grep -cE ' (WARN|ERROR) ' "$SERVER_ERR" || true)
  if ((problems > 0)); then
    log "the server logged $problems WARN/ERROR lines during $name #$run; the first ones:"
    grep -E ' (WARN|ERROR) ' "$SERVER_ERR" | head -n 5 >&2
  fi
  if ! kill -0 "$SERVER_PID" 2>/dev/null; then
    log "the server died during $name #$run; its stderr:"
    tail -n 20 "$SERVER_ERR" >&2
    SERVER_PID=""
    return 1
  fi
  stop_server
}

if [[ "${SKIP_BUILD:-0}" != 1 ]]; then
  log "building release binaries"
  (cd "$ROOT" && cargo build --release -p taskforge -p taskforge-bench)
fi
for bin in "$TASKFORGE_BIN" "$BENCH_BIN"; do
  [[ -x "$bin" ]] || { log "missing binary $bin"; exit 1; }
done
if ((NOFILE < 10100)); then
  log "warning: the open files limit is $NOFILE; 10,000 sockets need more (raise the hard limit)"
fi
mkdir -p "$OUT_DIR"
results="$OUT_DIR/fanout.jsonl"
log "results (JSON lines) in $OUT_DIR; runs=$RUNS paced=${PACED_SECS}s writers=$WRITERS users=$USERS generator threads=$GEN_THREADS"
if busy_compilers; then
  log "warning: compilers are running on this machine; the figures will be noisy"
fi
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
log "load average before the runs: $LOAD_BEFORE"

status=0
for i in $(seq 1 "$RUNS"); do
  for name in $SCENARIOS; do
    run_one "$name" "$i" "$results" || status=1
  done
done
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)

echo
echo "WebSocket fanout, medians of $RUNS runs ($(nproc) cores, generator beside the server, $GEN_THREADS generator thread(s));"
echo "load average before $LOAD_BEFORE, after $LOAD_AFTER"
echo "columns: events = tasks created; deliv/s = activity frames received / (first send .. last receipt);"
echo "         lost, dup = per socket, summed; other = out of order + unexpected seqs + sockets cut + error frames;"
echo "         latency in ms from the send of the POST to the receipt on a socket; genCPUs/srvCPUs = CPU seconds"
echo "         over that window; srvµs/dl = server CPU per delivery; KiB/sock = server RSS growth per subscribed socket"
echo
if [[ -s "$results" ]]; then
  "$BENCH_BIN" summarize "$results"
else
  echo "no run produced a report"
fi
exit "$status"
