#!/usr/bin/env bash
# The outbox relay on the scaled deployment: INSTANCES instances on one PostgreSQL database and one
# Redis, TEAMS teams written at a steady RATE of task creations/s spread over the instances and the
# teams. Measured: each task.created's age from its commit to its arrival on Redis (a PSUBSCRIBE
# team:* watcher, `taskforge-bench relay-lag`: the relay's lag plus Redis's delivery, the same for
# any server version), repeats and skips of each team's seqs on its channel; rows read from the
# activity log per activity written (PostgreSQL's pg_stat_user_tables); and from each instance's
# /metrics: activities committed and published, what the relay scan published for another
# instance, gap repairs. With WATCHERS=1 (the default) each generator also opens one WebSocket per
# team of its own on every instance (`writes --watch`), so every instance's hub follows every team
# as it would with users on them: their log check, gap repairs and the activities those sockets
# got (skips and repeats of each socket's seqs, closes) are part of the figures. WATCHERS=0 runs
# the relay alone. Loopback only; every run is bounded in time; everything this script starts is
# stopped on exit. See bench/README.md.
#
# With REDIS_CLUSTER=1 the instances run on a Redis Cluster of 3 primaries and 3 replicas
# (TASKFORGE_REDIS_CLUSTER, sharded pub/sub) instead of one redis-server. The watcher cannot
# pattern-subscribe sharded channels, so there the age figures are the servers' own
# (`taskforge_relay_lag_seconds`, from hand-over to the publish's answer; reported in both modes,
# as the histogram bucket bound that holds the quantile), and per primary: the publishes and
# script calls it ran (INFO commandstats) and its CPU seconds during the run.
#
# Each run: a fresh database, its own redis-server, INSTANCES fresh instances; INSTANCES
# generators (`taskforge-bench writes`, each with its own user and TEAMS/INSTANCES teams, against
# one instance, open loop at RATE/INSTANCES for WARMUP + DURATION s). One JSON line per run, and
# medians over RUNS runs at the end.
#
# Environment (all optional):
#   RUNS=3  RATE=600  TEAMS=999  INSTANCES=3  DURATION=20  WARMUP=3  CONCURRENCY=16  LABEL=relay
#   WATCHERS=1
#   PG_HOST=127.0.0.1 PG_PORT=5432 PG_USER=postgres PG_ADMIN_DB=test   (where to CREATE DATABASE)
#   REDIS_SERVER=redis-server  REDIS_CLI=redis-cli
#   KEEP_DB=1        keep the database and the temp dir (server and Redis logs) afterwards
#   SKIP_BUILD=1     do not run cargo build (use the binaries already in the target dir)
#   TASKFORGE_BIN, BENCH_BIN   use these binaries instead of target/release/{taskforge,taskforge-bench}
#                    (TASKFORGE_BIN of an older build measures "before": the watcher and the
#                    PostgreSQL figures do not depend on the server's version)
#   OUT_DIR          where the JSON lines go (default target/bench/relay-<time>)
#   Server settings such as TASKFORGE_RELAY_SCAN_INTERVAL pass through.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
RUNS=${RUNS:-3}
RATE=${RATE:-600}
TEAMS=${TEAMS:-999}
INSTANCES=${INSTANCES:-3}
DURATION=${DURATION:-20}
WARMUP=${WARMUP:-3}
CONCURRENCY=${CONCURRENCY:-16}
LABEL=${LABEL:-relay}
WATCHERS=${WATCHERS:-1}
PG_HOST=${PG_HOST:-127.0.0.1}
PG_PORT=${PG_PORT:-5432}
PG_USER=${PG_USER:-postgres}
PG_ADMIN_DB=${PG_ADMIN_DB:-test}
REDIS_SERVER=${REDIS_SERVER:-redis-server}
REDIS_CLI=${REDIS_CLI:-redis-cli}
REDIS_CLUSTER=${REDIS_CLUSTER:-0}
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
TASKFORGE_BIN=${TASKFORGE_BIN:-$TARGET_DIR/release/taskforge}
BENCH_BIN=${BENCH_BIN:-$TARGET_DIR/release/taskforge-bench}
OUT_DIR=${OUT_DIR:-$TARGET_DIR/bench/relay-$(date -u +%Y%m%dT%H%M%SZ)}
WS_QUEUE_LIMIT=1024
# The watcher outlasts the generators: their setup (users, teams), the load, and the tail.
SETUP_SLACK=30
WATCH_SECS=$((SETUP_SLACK + WARMUP + DURATION + 5))
RUN_CAP=$((WATCH_SECS + 60))

log() { printf '[relay] %s\n' "$*" >&2; }

WORK=$(mktemp -d "${TMPDIR:-/tmp}/taskforge-relay.XXXXXX")
SERVER_PID=""
# shellcheck source=bench/lib.sh
source "$(dirname "$0")/lib.sh"
# shellcheck source=bench/cluster-lib.sh
source "$(dirname "$0")/cluster-lib.sh"
JWT_SECRET="bench-relay-secret-$RANDOM$RANDOM$RANDOM-0123456789abcdefghijklmnop"
GEN_PIDS=()
WATCH_PID=""

# shellcheck disable=SC2317  # invoked by the EXIT trap
cleanup() {
  local pid
  for pid in "${GEN_PIDS[@]}" $WATCH_PID; do
    kill -TERM "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
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

psql_run() {
  PGCONNECT_TIMEOUT=5 timeout 60 psql -h "$PG_HOST" -p "$PG_PORT" -U "$PG_USER" -d "$PG_DB" \
    -v ON_ERROR_STOP=1 -Atqc "$1"
}

# Rows of `activities` read so far (sequential and index reads), and its live rows.
log_reads() {
  psql_run "SELECT pg_stat_force_next_flush()" >/dev/null 2>&1 || true
  psql_run "SELECT COALESCE(seq_tup_read, 0) + COALESCE(idx_tup_fetch, 0) FROM pg_stat_user_tables WHERE relname = 'activities'"
}

# metric_sum NAME: the sum over the instances of an unlabelled counter (empty if none has it).
metric_sum() {
  local url total="" v
  for url in "${INSTANCE_URLS[@]}"; do
    v=$(curl -fsS --max-time 5 "$url/metrics" | awk -v m="$1" '$1 == m { print $2 }' || true)
    [[ -n "$v" ]] && total=$(awk -v a="${total:-0}" -v b="$v" 'BEGIN { printf "%.0f", a + b }')
  done
  echo "$total"
}

# lag_bound Q: over the instances' `taskforge_relay_lag_seconds` histograms, the smallest bucket
# bound (ms) that holds the Q quantile (empty without samples).
lag_bound() {
  local url
  for url in "${INSTANCE_URLS[@]}"; do
    curl -fsS --max-time 5 "$url/metrics" || true
  done | awk '
    /^taskforge_relay_lag_seconds_bucket\{/ {
      match($0, /le="[^"]*"/); le = substr($0, RSTART + 4, RLENGTH - 5)
      if (le != "+Inf") n[le] += $2
    }
    /^taskforge_relay_lag_seconds_count/ { total += $2 }
    END { for (le in n) print le, n[le], total }' |
    sort -g | awk -v q="$1" '
      $3 > 0 && !found && $2 >= q * $3 { printf "%g", $1 * 1000; found = 1 }
      END { if (NR > 0 && !found) print "inf" }'
}

run_one() {
  local run=$1 results=$2 k per_rate per_teams reads0 reads1 rows status=0
  PG_DB="taskforge_relay_$(date +%s)_$$"
  psql_admin "CREATE DATABASE \"$PG_DB\"" >/dev/null
  DB_URL="postgres://$PG_USER@$PG_HOST:$PG_PORT/$PG_DB"
  if [[ "$REDIS_CLUSTER" == 1 ]]; then
    local attempt
    for attempt in 1 2 3; do
      start_redis_cluster && break
      log "the Redis Cluster did not start (attempt $attempt)"
      stop_redis
      ((attempt < 3)) || { drop_pg_db; return 1; }
    done
  else
    start_redis || { log "redis-server did not start"; return 1; }
  fi
  start_instances "$INSTANCES" "relay-$run" || { stop_instances; stop_redis; drop_pg_db; return 1; }
  per_rate=$(awk -v r="$RATE" -v n="$INSTANCES" 'BEGIN { printf "%.3f", r / n }')
  per_teams=$(((TEAMS + INSTANCES - 1) / INSTANCES))
  log "run $run/$RUNS: $INSTANCES instances, $per_teams teams and $per_rate creations/s each (load average $(cut -d' ' -f1-3 /proc/loadavg))"
  if [[ "$REDIS_CLUSTER" == 1 ]]; then
    echo "{\"label\": \"$LABEL\", \"redisCluster\": true}" >"$WORK/watch.json"
  else
    timeout --signal=TERM --kill-after=5 "$RUN_CAP" "$BENCH_BIN" relay-lag \
      --redis "redis://127.0.0.1:$REDIS_PORT" --duration "$WATCH_SECS" --kind task.created \
      --label "$LABEL" >"$WORK/watch.json" 2>"$WORK/watch.stderr" &
    WATCH_PID=$!
  fi
  local redis0
  redis0=$(redis_nodes_json)
  reads0=$(log_reads)
  GEN_PIDS=()
  local watch_args=() url
  if [[ "$WATCHERS" == 1 ]]; then
    for url in "${INSTANCE_URLS[@]}"; do watch_args+=(--watch "$url"); done
  fi
  for k in $(seq 0 $((INSTANCES - 1))); do
    timeout --signal=TERM --kill-after=5 "$RUN_CAP" "$BENCH_BIN" writes "${watch_args[@]}" \
      --url "${INSTANCE_URLS[$k]}" --teams "$per_teams" --rate "$per_rate" \
      --concurrency "$CONCURRENCY" --warmup "$WARMUP" --duration "$DURATION" --json \
      >"$WORK/gen$k.json" 2>"$WORK/gen$k.stderr" &
    GEN_PIDS+=($!)
  done
  for k in "${!GEN_PIDS[@]}"; do
    wait "${GEN_PIDS[$k]}" || { log "generator $k failed:"; tail -n 5 "$WORK/gen$k.stderr" >&2; status=1; }
  done
  GEN_PIDS=()
  if [[ -n "$WATCH_PID" ]]; then
    wait "$WATCH_PID" || { log "the watcher failed:"; tail -n 5 "$WORK/watch.stderr" >&2; status=1; }
  else
    sleep 5 # the tail: what the relays still publish
  fi
  WATCH_PID=""
  local redis1 lag50 lag99
  redis1=$(redis_nodes_json)
  lag50=$(lag_bound 0.5)
  lag99=$(lag_bound 0.99)
  reads1=$(log_reads)
  rows=$(psql_run "SELECT count(*) FROM activities WHERE kind = 'task.created'")
  local committed published repaired gaps created p99s
  committed=$(metric_sum taskforge_activities_committed_total)
  published=$(metric_sum taskforge_activities_published_total)
  repaired=$(metric_sum taskforge_relay_repaired_activities_total)
  gaps=$(metric_sum taskforge_gap_repairs_total)
  created=$(cat "$WORK"/gen*.json | jq -s 'map(.ok) | add')
  p99s=$(cat "$WORK"/gen*.json | jq -s 'map(.latency.p99Ms // .latencyMs.p99 // null)')
  local watch
  watch=$(cat "$WORK"/gen*.json | jq -sc 'map(.watch // empty) | if length == 0 then null else
    {sockets: (map(.sockets) | add), deliveries: (map(.deliveries) | add),
     skipped: (map(.skipped) | add), repeated: (map(.repeated) | add),
     closes: (map(.closes | to_entries[]) | group_by(.key)
              | map({key: .[0].key, value: (map(.value) | add)}) | from_entries)} end')
  for k in "${!INSTANCE_PIDS[@]}"; do
    if ! kill -0 "${INSTANCE_PIDS[$k]}" 2>/dev/null; then
      log "instance $k died; its stderr:"
      tail -n 20 "${INSTANCE_ERRS[$k]}" >&2
      status=1
    fi
  done
  jq -c --argjson run "$run" --argjson rate "$RATE" --argjson teams "$TEAMS" \
    --argjson instances "$INSTANCES" --argjson reads "$((reads1 - reads0))" \
    --argjson rows "$rows" --argjson created "${created:-0}" \
    --arg committed "$committed" --arg published "$published" --arg repaired "$repaired" \
    --arg gaps "$gaps" --argjson genP99 "$p99s" --argjson watch "$watch" \
    --argjson minutes "$(awk -v w="$WARMUP" -v d="$DURATION" 'BEGIN { printf "%.4f", (w + d) / 60 }')" \
    --argjson redis0 "$redis0" --argjson redis1 "$redis1" \
    --arg lag50 "$lag50" --arg lag99 "$lag99" \
    '. + {run: $run, rate: $rate, teams: $teams, instances: $instances, created: $created,
          taskCreatedRows: $rows, logRowsRead: $reads,
          logRowsReadPerActivity: (if $rows > 0 then ($reads / $rows) else null end),
          committed: ($committed | tonumber? // null), published: ($published | tonumber? // null),
          relayRepaired: ($repaired | tonumber? // null), gapRepairs: ($gaps | tonumber? // null),
          gapRepairsPerMinute: ($gaps | tonumber? // null | if . == null then null else (. / $minutes * 10 | round / 10) end),
          generatorP99: $genP99,
          watch: (if $watch == null then null else $watch + {expected: ($rows * $instances)} end),
          serverLagP50BoundMs: ($lag50 | tonumber? // null),
          serverLagP99BoundMs: ($lag99 | tonumber? // null),
          redisPrimaries: [range(0; $redis1 | length) as $i | $redis1[$i] as $b
            | ($redis0 | map(select(.port == $b.port)) | first // {publishes: 0, scripts: 0, cpuSec: 0}) as $a
            | {port: $b.port, publishes: ($b.publishes - $a.publishes),
               scripts: ($b.scripts - $a.scripts),
               cpuSec: (($b.cpuSec - $a.cpuSec) * 1000 | round / 1000)}]}' \
    "$WORK/watch.json" | tee -a "$results"
  stop_instances
  stop_redis
  drop_pg_db
  return "$status"
}

if [[ "${SKIP_BUILD:-0}" != 1 ]]; then
  log "building release binaries"
  (cd "$ROOT" && cargo build --release -p taskforge -p taskforge-bench)
fi
for bin in "$TASKFORGE_BIN" "$BENCH_BIN"; do
  [[ -x "$bin" ]] || { log "missing binary $bin"; exit 1; }
done
for tool in psql jq curl "$REDIS_SERVER" "$REDIS_CLI"; do
  command -v "$tool" >/dev/null || { log "missing $tool"; exit 1; }
done
if busy_compilers; then
  log "warning: a compiler is running; the figures will be noisy"
fi
mkdir -p "$OUT_DIR"
RESULTS="$OUT_DIR/results.jsonl"
failed=0
for run in $(seq 1 "$RUNS"); do
  run_one "$run" "$RESULTS" || failed=1
done
log "medians over $RUNS runs ($RESULTS):"
jq -s '
  def median: map(select(. != null)) | sort | if length == 0 then null
    elif length % 2 == 1 then .[length / 2 | floor]
    else (.[length / 2 - 1] + .[length / 2]) / 2 end;
  { label: .[0].label, runs: length, rate: .[0].rate, teams: .[0].teams,
    created: (map(.created) | median),
    ageP50Ms: (map(.ageP50Ms) | median), ageP99Ms: (map(.ageP99Ms) | median),
    ageP999Ms: (map(.ageP999Ms) | median), ageMaxMs: (map(.ageMaxMs) | median),
    repeats: (map(.repeats) | median), skips: (map(.skips) | median),
    logRowsReadPerActivity: (map(.logRowsReadPerActivity) | median),
    relayRepaired: (map(.relayRepaired) | median), gapRepairs: (map(.gapRepairs) | median),
    gapRepairsPerMinute: (map(.gapRepairsPerMinute) | median),
    watchDeliveredShare: (map(.watch | if . == null or .expected == 0 then null
      else .deliveries / .expected end) | median),
    watchSkipped: (map(.watch.skipped) | median), watchRepeated: (map(.watch.repeated) | median),
    serverLagP50BoundMs: (map(.serverLagP50BoundMs) | median),
    serverLagP99BoundMs: (map(.serverLagP99BoundMs) | median),
    publishShares: (map(.redisPrimaries | (map(.publishes) | add) as $t
      | map(if $t > 0 then (.publishes / $t * 100 | round) else null end) | sort)) }' \
  "$RESULTS"
exit "$failed"
