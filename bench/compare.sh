#!/usr/bin/env bash
# TaskForge, the Socket.IO peer and the bare-write floor, side by side under the same load, from
# the same generator, on the same machine; prints the table of medians and ratios with the
# targets. See docs/benchmarks.md. Loopback only; every run is bounded in time; every server is
# stopped on exit.
#
# In each round, every scenario runs against each kind in turn, on a fresh server:
#   n1000-max      1000 sockets, 2000 events, closed loop (window of WINDOW events in flight)
#   n10000-max    10000 sockets,  500 events, closed loop
#                 (both without arrival stamps: at max rate latency is queueing, and stamping
#                 puts a clock read on every packet the server sends)
#   n1000-paced    1000 sockets, 20 events/s for PACED_SECS s (open loop)
#   n10000-paced  10000 sockets,  4 events/s for PACED_SECS s (open loop)
#   n15000-idle   15000 subscribed sockets held idle HOLD_SECS s: RSS per socket (no floor run:
#                 the floor keeps no per-socket state to compare with)
#
# Environment (all optional):
#   RUNS=3  PACED_SECS=15  HOLD_SECS=10  WINDOW=8  WRITERS=4  USERS=20  DELIVERY_TIMEOUT=60
#   GEN_THREADS=1
#   SCENARIOS="n1000-max n10000-max n1000-paced n10000-paced n15000-idle"
#   KINDS="taskforge socketio floor"
#   SKIP_BUILD=1   use the binaries already built
#   OUT_DIR        where the JSON lines go (default target/bench/compare-<time>)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
RUNS=${RUNS:-3}
PACED_SECS=${PACED_SECS:-15}
HOLD_SECS=${HOLD_SECS:-10}
WINDOW=${WINDOW:-8}
WRITERS=${WRITERS:-4}
USERS=${USERS:-20}
DELIVERY_TIMEOUT=${DELIVERY_TIMEOUT:-60}
GEN_THREADS=${GEN_THREADS:-1}
SCENARIOS=${SCENARIOS:-n1000-max n10000-max n1000-paced n10000-paced n15000-idle}
KINDS=${KINDS:-taskforge socketio floor}
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
TASKFORGE_BIN=${TASKFORGE_BIN:-$TARGET_DIR/release/taskforge}
BENCH_BIN=${BENCH_BIN:-$TARGET_DIR/release/taskforge-bench}
OUT_DIR=${OUT_DIR:-$TARGET_DIR/bench/compare-$(date -u +%Y%m%dT%H%M%SZ)}
RUN_CAP=$((PACED_SECS + HOLD_SECS + DELIVERY_TIMEOUT + 300))

log() { printf '[compare] %s\n' "$*" >&2; }

WORK=$(mktemp -d "${TMPDIR:-/tmp}/taskforge-compare.XXXXXX")
SERVER_PID=""
# shellcheck source=bench/lib.sh
source "$(dirname "$0")/lib.sh"
BENCH_PID=""

# shellcheck disable=SC2317  # invoked by the EXIT trap
cleanup() {
  if [[ -n "$BENCH_PID" ]]; then
    kill -TERM "$BENCH_PID" 2>/dev/null || true
    wait "$BENCH_PID" 2>/dev/null || true
  fi
  stop_server
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

ulimit -Sn "$(ulimit -Hn)" 2>/dev/null || true

# scenario_args NAME: the generator's subcommand and arguments for a scenario.
scenario_args() {
  case "$1" in
    n1000-max) echo "fanout --sockets 1000 --events 2000 --window $WINDOW --no-arrival" ;;
    n10000-max) echo "fanout --sockets 10000 --events 500 --window $WINDOW --no-arrival" ;;
    n1000-paced) echo "fanout --sockets 1000 --rate 20 --events $((20 * PACED_SECS))" ;;
    n10000-paced) echo "fanout --sockets 10000 --rate 4 --events $((4 * PACED_SECS))" ;;
    n15000-idle) echo "connect --sockets 15000 --hold $HOLD_SECS" ;;
    *) return 1 ;;
  esac
}

# start_kind KIND NAME: the server of that kind, fresh; sets SERVER_* and BENCH_ENV.
start_kind() {
  local secret="bench-jwt-secret-$RANDOM$RANDOM-0123456789abcdefghijklmnop"
  BENCH_ENV=()
  case "$1" in
    taskforge)
      # A socket may lag a whole max-rate run behind (2,000 events) without being cut.
      start_server "sqlite://$WORK/$2.db" "$2" TASKFORGE_WS_QUEUE_LIMIT=4096
      ;;
    socketio)
      start_peer "$2" "$secret"
      BENCH_ENV=(TASKFORGE_BENCH_JWT_SECRET="$secret")
      ;;
    floor) start_floor "$2" ;;
    *) log "unknown kind $1"; return 1 ;;
  esac
}

# run_one SCENARIO KIND RUN RESULTS: one run on its own server; appends its JSON line.
run_one() {
  local name=$1 kind=$2 run=$3 results=$4 args line rc=0
  args=$(scenario_args "$name") || { log "unknown scenario $name"; return 1; }
  start_kind "$kind" "$name-$kind-$run" || return 1
  log "$name/$kind run $run/$RUNS: $args (pid $SERVER_PID; load average $(cut -d' ' -f1-3 /proc/loadavg))"
  # shellcheck disable=SC2086  # $args is a subcommand and its options
  env "${BENCH_ENV[@]}" timeout --signal=TERM --kill-after=5 "$RUN_CAP" \
    "$BENCH_BIN" --threads "$GEN_THREADS" $args --server-kind "$kind" \
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
    log "$name/$kind #$run exited with status $rc (4 = lost/duplicate/unexpected deliveries or cut sockets); its stderr:"
    grep -v '^fanout: ' "$WORK/run.stderr" | tail -n 20 >&2 || true
  fi
  if ! kill -0 "$SERVER_PID" 2>/dev/null; then
    log "$kind died during $name #$run; its stderr:"
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
if [[ " $KINDS " == *" socketio "* ]]; then
  install_peer
fi
mkdir -p "$OUT_DIR"
results="$OUT_DIR/compare.jsonl"
log "results (JSON lines) in $OUT_DIR; runs=$RUNS kinds=($KINDS) scenarios=($SCENARIOS)"
if busy_compilers; then
  log "warning: compilers are running on this machine; the figures will be noisy"
fi
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)

status=0
for i in $(seq 1 "$RUNS"); do
  for name in $SCENARIOS; do
    for kind in $KINDS; do
      if [[ "$name" == n15000-idle && "$kind" == floor ]]; then
        continue
      fi
      run_one "$name" "$kind" "$i" "$results" || status=1
    done
  done
done
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)

echo
echo "TaskForge vs Socket.IO 4.8 vs the bare-write floor: medians of $RUNS rounds, and the median"
echo "of the per-round ratios ($(nproc) cores, generator beside the server; load average before"
echo "$LOAD_BEFORE, after $LOAD_AFTER). Lower is better for every ratio."
echo
if [[ -s "$results" ]]; then
  "$BENCH_BIN" compare "$results"
else
  echo "no run produced a report"
fi
exit "$status"
