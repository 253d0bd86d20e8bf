#!/usr/bin/env bash
# WebSocket fanout on the scaled deployment: several `taskforge serve` instances on one PostgreSQL
# database and one Redis, many /realtime sockets of one team spread over them. See bench/README.md.
# Loopback only; every run is bounded in time; everything this script starts is stopped on exit.
#
# It creates a fresh database (CREATE DATABASE on PG_HOST:PG_PORT as PG_USER, dropped at exit),
# starts its own redis-server on a free loopback port (no persistence), and for every run starts
# the instances afresh (same JWT secret, TASKFORGE_REDIS_URL set), the first one alone first (it
# applies the migrations). The generator sets up the team through the first instance, spreads
# the sockets and the writers over all of them round-robin, and counts the Redis messages of the
# measured window by channel kind (a PSUBSCRIBE team:* user:* tap) and the commands Redis ran.
#
# Scenarios, each repeated RUNS times (medians printed); names are c<instances>-n<sockets>-<load>:
#   c3-n15000-max     15000 sockets over 3 instances, EVENTS_MAX (200) tasks as fast as the
#                     deployment delivers them: closed loop, at most MAX_WINDOW (8) created tasks
#                     short of a socket at once (an open loop only grows a backlog in the generator
#                     until the servers drop its sockets for not answering pings)
#   c3-n15000-paced   15000 sockets over 3 instances, PACED_RATE (4) tasks/s for PACED_SECS (15) s
# Any other cK-nN-max / cK-nN-paced works too (e.g. SCENARIOS=c3-n300-max EVENTS_MAX=100 for a
# quick check).
#
# KINDS="taskforge socketio" runs each scenario, in each round, also against K instances of the
# Socket.IO peer (bench/socketio-peer) with @socket.io/redis-adapter on the same Redis (its
# defaults), and prints the side-by-side table of `taskforge-bench compare` as well.
#
# Environment (all optional):
#   RUNS=3  EVENTS_MAX=200  MAX_WINDOW=8  PACED_RATE=4  PACED_SECS=15  GEN_THREADS=1  WRITERS=6  USERS=20
#   DELIVERY_TIMEOUT=90   seconds the generator waits for deliveries after its last send
#   SCENARIOS="c3-n15000-max c3-n15000-paced"   KINDS=taskforge
#   WS_QUEUE_LIMIT=4096   the servers' TASKFORGE_WS_QUEUE_LIMIT
#   PG_HOST=127.0.0.1 PG_PORT=5432 PG_USER=postgres PG_ADMIN_DB=test   (where to CREATE DATABASE)
#   REDIS_SERVER=redis-server  REDIS_CLI=redis-cli
#   KEEP_DB=1        keep the database and the temp dir (server and Redis logs) afterwards
#   SKIP_BUILD=1     do not run cargo build (use the binaries already in the target dir)
#   TASKFORGE_BIN, BENCH_BIN   use these binaries instead of target/release/{taskforge,taskforge-bench}
#   OUT_DIR          where the JSON lines of every run go (default target/bench/cluster-fanout-<time>)
#   Server settings such as TASKFORGE_LOG or TASKFORGE_BUS_CHECK_INTERVAL pass through.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
RUNS=${RUNS:-3}
EVENTS_MAX=${EVENTS_MAX:-200}
MAX_WINDOW=${MAX_WINDOW:-8}
PACED_RATE=${PACED_RATE:-4}
PACED_SECS=${PACED_SECS:-15}
GEN_THREADS=${GEN_THREADS:-1}
WRITERS=${WRITERS:-6}
USERS=${USERS:-20}
DELIVERY_TIMEOUT=${DELIVERY_TIMEOUT:-90}
SCENARIOS=${SCENARIOS:-c3-n15000-max c3-n15000-paced}
KINDS=${KINDS:-taskforge}
WS_QUEUE_LIMIT=${WS_QUEUE_LIMIT:-4096}
PG_HOST=${PG_HOST:-127.0.0.1}
PG_PORT=${PG_PORT:-5432}
PG_USER=${PG_USER:-postgres}
PG_ADMIN_DB=${PG_ADMIN_DB:-test}
REDIS_SERVER=${REDIS_SERVER:-redis-server}
REDIS_CLI=${REDIS_CLI:-redis-cli}
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
TASKFORGE_BIN=${TASKFORGE_BIN:-$TARGET_DIR/release/taskforge}
BENCH_BIN=${BENCH_BIN:-$TARGET_DIR/release/taskforge-bench}
OUT_DIR=${OUT_DIR:-$TARGET_DIR/bench/cluster-fanout-$(date -u +%Y%m%dT%H%M%SZ)}
# Hard cap for one generator run: setup + sockets + load + drain timeout + slack.
RUN_CAP=$((PACED_SECS + DELIVERY_TIMEOUT + 300))

log() { printf '[cluster-fanout] %s\n' "$*" >&2; }

WORK=$(mktemp -d "${TMPDIR:-/tmp}/taskforge-cluster.XXXXXX")
SERVER_PID=""
# shellcheck source=bench/lib.sh
source "$(dirname "$0")/lib.sh"
# shellcheck source=bench/cluster-lib.sh
source "$(dirname "$0")/cluster-lib.sh"
BENCH_PID=""
# The same secret on every instance (tokens made by one are accepted by the others).
JWT_SECRET="bench-cluster-secret-$RANDOM$RANDOM$RANDOM-0123456789abcdefghijklmnop"

# shellcheck disable=SC2317  # invoked by the EXIT trap
cleanup() {
  if [[ -n "$BENCH_PID" ]]; then
    kill -TERM "$BENCH_PID" 2>/dev/null || true # `timeout` passes it on to the generator
    wait "$BENCH_PID" 2>/dev/null || true
  fi
  stop_server
  stop_instances
  stop_redis
  drop_pg_db
  if [[ "${KEEP_DB:-0}" == 1 ]]; then
    log "kept $WORK"
  else
    rm -rf "$WORK"
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Every instance and the generator hold one file descriptor per socket.
ulimit -Sn "$(ulimit -Hn)" 2>/dev/null || true
NOFILE=$(ulimit -Sn)

# scenario_args NAME: the number of instances, then the generator's arguments.
scenario_args() {
  [[ "$1" =~ ^c([0-9]+)-n([0-9]+)-(max|paced)$ ]] || return 1
  local inst=${BASH_REMATCH[1]} sockets=${BASH_REMATCH[2]} load=${BASH_REMATCH[3]}
  ((inst >= 1 && sockets >= 1)) || return 1
  case "$load" in
    max) echo "$inst --sockets $sockets --events $EVENTS_MAX --window $MAX_WINDOW" ;;
    paced)
      echo "$inst --sockets $sockets --rate $PACED_RATE --events $(awk -v r="$PACED_RATE" -v s="$PACED_SECS" 'BEGIN { n = int(r * s); print (n > 0 ? n : 1) }')"
      ;;
  esac
}

join_by() {
  local IFS=$1
  shift
  echo "$*"
}

# run_one NAME KIND RUN RESULTS_FILE: one run on fresh instances; appends its JSON line to
# RESULTS_FILE.
run_one() {
  local name=$1 kind=$2 run=$3 results=$4 spec inst args line rc=0 k problems status=0
  spec=$(scenario_args "$name") || { log "unknown scenario $name (expected cK-nN-max or cK-nN-paced)"; return 1; }
  inst=${spec%% *}
  args=${spec#* }
  rcli flushall >/dev/null || { log "Redis does not answer"; return 1; }
  case "$kind" in
    taskforge) start_instances "$inst" "$name-$run" || { stop_instances; return 1; } ;;
    socketio) start_peers "$inst" "$name-$run" || { stop_instances; return 1; } ;;
    *) log "unknown kind $kind"; return 1 ;;
  esac
  log "$name/$kind run $run/$RUNS: $inst instances (pids ${INSTANCE_PIDS[*]}), $args (load average $(cut -d' ' -f1-3 /proc/loadavg))"
  # In the background, so that a signal to this script is handled at once (see cleanup).
  # shellcheck disable=SC2086  # $args is a list of options
  TASKFORGE_BENCH_JWT_SECRET="$JWT_SECRET" timeout --signal=TERM --kill-after=5 "$RUN_CAP" \
    "$BENCH_BIN" --threads "$GEN_THREADS" fanout --server-kind "$kind" \
    --url "$(join_by , "${INSTANCE_URLS[@]}")" --server-pid "$(join_by , "${INSTANCE_PIDS[@]}")" \
    --redis "redis://127.0.0.1:$REDIS_PORT" --redis-pid "$REDIS_PID" \
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
    status=1
  fi
  for k in "${!INSTANCE_PIDS[@]}"; do
    problems=$(grep -cE ' (WARN|ERROR) ' "${INSTANCE_ERRS[$k]}" || true)
    if ((problems > 0)); then
      log "instance $k logged $problems WARN/ERROR lines during $name #$run; the first ones:"
      grep -E ' (WARN|ERROR) ' "${INSTANCE_ERRS[$k]}" | head -n 5 >&2
    fi
    if ! kill -0 "${INSTANCE_PIDS[$k]}" 2>/dev/null; then
      log "instance $k died during $name #$run; its stderr:"
      tail -n 20 "${INSTANCE_ERRS[$k]}" >&2
      status=1
    fi
  done
  if ! kill -0 "$REDIS_PID" 2>/dev/null; then
    log "redis-server died during $name #$run"
    stop_instances
    return 2
  fi
  stop_instances
  return "$status"
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
for tool in psql "$REDIS_SERVER" "$REDIS_CLI"; do
  command -v "$tool" >/dev/null || { log "missing $tool"; exit 1; }
done
if ! psql_admin 'SELECT 1' >/dev/null 2>&1; then
  log "PostgreSQL at $PG_HOST:$PG_PORT (user $PG_USER, db $PG_ADMIN_DB) is not reachable"
  exit 1
fi
max_sockets=0
for name in $SCENARIOS; do
  if [[ "$name" =~ -n([0-9]+)- ]] && ((BASH_REMATCH[1] > max_sockets)); then
    max_sockets=${BASH_REMATCH[1]}
  fi
done
if ((NOFILE < max_sockets + 200)); then
  log "warning: the open files limit is $NOFILE; the generator holds $max_sockets sockets (raise the hard limit)"
fi

PG_DB="taskforge_cluster_$(date +%s)_$$"
psql_admin "CREATE DATABASE \"$PG_DB\"" >/dev/null
DB_URL="postgres://$PG_USER@$PG_HOST:$PG_PORT/$PG_DB"
start_redis || { log "could not start redis-server"; exit 1; }
log "database $PG_DB on $PG_HOST:$PG_PORT; redis-server pid $REDIS_PID on 127.0.0.1:$REDIS_PORT ($("$REDIS_SERVER" --version | awk '{print $3}'))"

mkdir -p "$OUT_DIR"
results="$OUT_DIR/cluster-fanout.jsonl"
log "results (JSON lines) in $OUT_DIR; runs=$RUNS events(max)=$EVENTS_MAX paced=${PACED_RATE}/s x ${PACED_SECS}s writers=$WRITERS users=$USERS generator threads=$GEN_THREADS"
if busy_compilers; then
  log "warning: compilers are running on this machine; the figures will be noisy"
fi
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
log "load average before the runs: $LOAD_BEFORE"

status=0
for i in $(seq 1 "$RUNS"); do
  for name in $SCENARIOS; do
    for kind in $KINDS; do
      rc=0
      run_one "$name" "$kind" "$i" "$results" || rc=$?
      if ((rc == 2)); then
        status=1
        break 3
      fi
      ((rc == 0)) || status=1
    done
  done
done
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)

echo
echo "WebSocket fanout on the scaled deployment (PostgreSQL + Redis), medians of $RUNS runs"
echo "($(nproc) cores shared by the instances, PostgreSQL, Redis and the generator; $GEN_THREADS generator thread(s));"
echo "load average before $LOAD_BEFORE, after $LOAD_AFTER"
echo "columns: inst = instances; events = tasks created; deliv/s = activity frames received / (first send .. last receipt);"
echo "         lost, dup = per socket, summed; other = out of order + unexpected seqs + sockets cut + error frames;"
echo "         latency in ms from the send of the POST to the receipt on a socket; genCPUs/srvCPUs = CPU seconds over"
echo "         that window (srvCPUs: all instances); srvµs/dl = instances' CPU per delivery; team/act, user/act = Redis"
echo "         messages on team:/user: channels per task created; rcmd/act = Redis commands per task created;"
echo "         rµs/act = redis-server CPU per task created; KiB/sock = instances' RSS growth per subscribed socket"
echo
if [[ -s "$results" ]]; then
  "$BENCH_BIN" summarize "$results"
  if [[ "$KINDS" != taskforge ]]; then
    echo
    "$BENCH_BIN" compare "$results"
  fi
else
  echo "no run produced a report"
fi
exit "$status"
