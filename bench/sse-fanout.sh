#!/usr/bin/env bash
# The same fanout over WebSocket (/realtime) and over SSE (/realtime/sse), side by side: prints
# each transport's medians and the SSE / WebSocket ratio of every round and its median. See
# bench/README.md and docs/benchmarks.md. Loopback only; every run is bounded in time; the server
# is stopped on exit.
#
# In each round, every scenario runs over WebSocket, then over SSE, each on a fresh server with a
# fresh SQLite file:
#   n1000-max      1000 connections, 2000 events, closed loop (window of WINDOW events in flight)
#   n10000-max    10000 connections,  500 events, closed loop
#                 (both without arrival stamps, as in bench/compare.sh: their figure is CPU per
#                 delivery; latency at max rate is the window's queueing)
#   n1000-paced    1000 connections, 20 events/s for PACED_SECS s (open loop, stamped)
#   n10000-paced  10000 connections,  4 events/s for PACED_SECS s (open loop, stamped)
#   n15000-idle   15000 subscribed connections held idle IDLE_HOLD_SECS s: RSS per connection
# Every connection holds one file descriptor in the server and one in the generator: 15,000 is
# about the most the usual 20,000 open files per process allow.
#
# Environment (all optional):
#   RUNS=3  WINDOW=8  PACED_SECS=15  HOLD_SECS=2  IDLE_HOLD_SECS=10  WRITERS=4  USERS=20
#   DELIVERY_TIMEOUT=60  GEN_THREADS=1
#   SCENARIOS="n1000-max n10000-max"   (any of the above, in this order)
#   TRANSPORTS="websocket sse"         (the order within a round)
#   WS_QUEUE_LIMIT=4096   the server's TASKFORGE_WS_QUEUE_LIMIT, which bounds an SSE stream's
#                         queue too (a connection may lag a whole max-rate run behind)
#   KEEP_DB=1        keep the temp dir (SQLite files, server logs) afterwards
#   SKIP_BUILD=1     do not run cargo build (use the binaries already in the target dir)
#   TASKFORGE_BIN, BENCH_BIN, OUT_DIR (default target/bench/sse-fanout-<time>)
#   Server settings such as TASKFORGE_LOG pass through.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
RUNS=${RUNS:-3}
WINDOW=${WINDOW:-8}
PACED_SECS=${PACED_SECS:-15}
HOLD_SECS=${HOLD_SECS:-2}
IDLE_HOLD_SECS=${IDLE_HOLD_SECS:-10}
WRITERS=${WRITERS:-4}
USERS=${USERS:-20}
DELIVERY_TIMEOUT=${DELIVERY_TIMEOUT:-60}
GEN_THREADS=${GEN_THREADS:-1}
SCENARIOS=${SCENARIOS:-n1000-max n10000-max}
TRANSPORTS=${TRANSPORTS:-websocket sse}
WS_QUEUE_LIMIT=${WS_QUEUE_LIMIT:-4096}
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
TASKFORGE_BIN=${TASKFORGE_BIN:-$TARGET_DIR/release/taskforge}
BENCH_BIN=${BENCH_BIN:-$TARGET_DIR/release/taskforge-bench}
OUT_DIR=${OUT_DIR:-$TARGET_DIR/bench/sse-fanout-$(date -u +%Y%m%dT%H%M%SZ)}
RUN_CAP=$((PACED_SECS + IDLE_HOLD_SECS + HOLD_SECS + DELIVERY_TIMEOUT + 300))

log() { printf '[sse-fanout] %s\n' "$*" >&2; }

WORK=$(mktemp -d "${TMPDIR:-/tmp}/taskforge-sse-fanout.XXXXXX")
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

# Both the server and the generator hold one file descriptor per connection.
ulimit -Sn "$(ulimit -Hn)" 2>/dev/null || true
NOFILE=$(ulimit -Sn)

# scenario_args NAME: the generator's subcommand and arguments for a scenario.
scenario_args() {
  case "$1" in
    n1000-max) echo "fanout --sockets 1000 --events 2000 --window $WINDOW --no-arrival --hold $HOLD_SECS" ;;
    n10000-max) echo "fanout --sockets 10000 --events 500 --window $WINDOW --no-arrival --hold $HOLD_SECS" ;;
    n1000-paced) echo "fanout --sockets 1000 --rate 20 --events $((20 * PACED_SECS)) --hold $HOLD_SECS" ;;
    n10000-paced) echo "fanout --sockets 10000 --rate 4 --events $((4 * PACED_SECS)) --hold $HOLD_SECS" ;;
    n15000-idle) echo "connect --sockets 15000 --hold $IDLE_HOLD_SECS" ;;
    *) return 1 ;;
  esac
}

# run_one SCENARIO TRANSPORT RUN RESULTS: one run on its own server; appends its JSON line.
run_one() {
  local name=$1 transport=$2 run=$3 results=$4 args line rc=0
  args=$(scenario_args "$name") || { log "unknown scenario $name"; return 1; }
  start_server "sqlite://$WORK/$name-$transport-$run.db" "$name-$transport-$run" \
    TASKFORGE_WS_QUEUE_LIMIT="$WS_QUEUE_LIMIT" || return 1
  log "$name/$transport run $run/$RUNS: $args (pid $SERVER_PID; load average $(cut -d' ' -f1-3 /proc/loadavg))"
  # In the background, so that a signal to this script is handled at once (see cleanup).
  # shellcheck disable=SC2086  # $args is a subcommand and its options
  timeout --signal=TERM --kill-after=5 "$RUN_CAP" \
    "$BENCH_BIN" --threads "$GEN_THREADS" $args --transport "$transport" \
    --url "$SERVER_URL" --server-pid "$SERVER_PID" --writers "$WRITERS" --users "$USERS" \
    --timeout "$DELIVERY_TIMEOUT" --label "$name" --json >"$WORK/run.json" 2>"$WORK/run.stderr" &
  BENCH_PID=$!
  wait "$BENCH_PID" || rc=$?
  BENCH_PID=""
  line=$(tail -n 1 "$WORK/run.json")
  if [[ -n "$line" ]]; then
    printf '%s\n' "$line" >>"$results"
    printf '%s\n' "$line" | "$BENCH_BIN" summarize | tail -n 1 | sed 's/^/    /' >&2
  fi
  if ((rc != 0)); then
    log "$name/$transport #$run exited with status $rc (4 = lost/duplicate/unexpected deliveries or cut connections); its stderr:"
    grep -v '^fanout: ' "$WORK/run.stderr" | tail -n 20 >&2 || true
  fi
  local problems
  problems=$(grep -cE ' (WARN|ERROR) ' "$SERVER_ERR" || true)
  if ((problems > 0)); then
    log "the server logged $problems WARN/ERROR lines during $name/$transport #$run; the first ones:"
    grep -E ' (WARN|ERROR) ' "$SERVER_ERR" | head -n 5 >&2
  fi
  if ! kill -0 "$SERVER_PID" 2>/dev/null; then
    log "the server died during $name/$transport #$run; its stderr:"
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
if ((NOFILE < 10100)); then
  log "warning: the open files limit is $NOFILE; 10,000 connections need more (raise the hard limit)"
fi
mkdir -p "$OUT_DIR"
results="$OUT_DIR/sse-fanout.jsonl"
log "results (JSON lines) in $OUT_DIR; runs=$RUNS scenarios=($SCENARIOS) transports=($TRANSPORTS)"
if busy_compilers; then
  log "warning: compilers are running on this machine; the figures will be noisy"
fi
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
log "load average before the runs: $LOAD_BEFORE"

status=0
for i in $(seq 1 "$RUNS"); do
  for name in $SCENARIOS; do
    for transport in $TRANSPORTS; do
      run_one "$name" "$transport" "$i" "$results" || status=1
    done
  done
done
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)

echo
echo "Fanout over WebSocket and over SSE: medians of $RUNS rounds, the SSE / WebSocket ratio of every"
echo "round and its median ($(nproc) cores, generator beside the server, $GEN_THREADS generator thread(s);"
echo "load average before $LOAD_BEFORE, after $LOAD_AFTER)."
echo
if [[ -s "$results" ]]; then
  "$BENCH_BIN" transports "$results"
  echo
  "$BENCH_BIN" summarize "$results"
else
  echo "no run produced a report"
fi
exit "$status"
