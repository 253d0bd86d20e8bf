#!/usr/bin/env bash
# Soak: 3 `taskforge serve` instances on one PostgreSQL database and one Redis, SOCKETS sockets of
# one team spread over them, steady activity for MINUTES minutes, CHURN_PERCENT of the sockets
# reconnecting with resume every minute. Reports every instance's RSS each minute (and its spread
# after WARMUP_MINUTES), deliveries, and lost / duplicated activities, which must be 0.
# Not part of CI. Loopback only; bounded in time (MINUTES + setup + DRAIN_TIMEOUT + slack);
# everything it starts is stopped on exit. See bench/README.md.
#
# Environment (all optional):
#   SOCKETS=30000  MINUTES=20  RATE=2 (tasks/s)  CHURN_PERCENT=10  WARMUP_MINUTES=2
#   GENERATORS=2   generator processes sharing the sockets (one process holds ~20,000 at most)
#   INSTANCES=3  USERS=20  DRAIN_TIMEOUT=120  WS_QUEUE_LIMIT=4096
#   PG_HOST=127.0.0.1 PG_PORT=5432 PG_USER=postgres PG_ADMIN_DB=test
#   REDIS_SERVER=redis-server REDIS_CLI=redis-cli  KEEP_DB=1  SKIP_BUILD=1
#   TASKFORGE_BIN, BENCH_BIN, OUT_DIR
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SOCKETS=${SOCKETS:-30000}
MINUTES=${MINUTES:-20}
RATE=${RATE:-2}
CHURN_PERCENT=${CHURN_PERCENT:-10}
WARMUP_MINUTES=${WARMUP_MINUTES:-2}
GENERATORS=${GENERATORS:-2}
INSTANCES=${INSTANCES:-3}
USERS=${USERS:-20}
DRAIN_TIMEOUT=${DRAIN_TIMEOUT:-120}
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
OUT_DIR=${OUT_DIR:-$TARGET_DIR/bench/soak-$(date -u +%Y%m%dT%H%M%SZ)}
# Hard cap of the generators: the load, opening the sockets, the drain, and slack.
RUN_CAP=$(awk -v m="$MINUTES" -v d="$DRAIN_TIMEOUT" 'BEGIN { print int(m * 60 + d + 600) }')

((GENERATORS >= 1 && GENERATORS <= 15)) || { echo "GENERATORS must be 1..15" >&2; exit 2; }

log() { printf '[soak] %s\n' "$*" >&2; }

WORK=$(mktemp -d "${TMPDIR:-/tmp}/taskforge-soak.XXXXXX")
SERVER_PID=""
# shellcheck source=bench/lib.sh
source "$(dirname "$0")/lib.sh"
# shellcheck source=bench/cluster-lib.sh
source "$(dirname "$0")/cluster-lib.sh"
# Tokens must outlive the run: a socket is cut when its token expires.
INSTANCE_ENV=(TASKFORGE_ACCESS_TOKEN_TTL=6h TASKFORGE_DATABASE_POOL_SIZE="${DATABASE_POOL_SIZE:-16}")
GEN_PIDS=()
SAMPLER_PID=""
JWT_SECRET="bench-soak-secret-$RANDOM$RANDOM$RANDOM-0123456789abcdefghijklmnop"

# shellcheck disable=SC2317  # invoked by the EXIT trap
cleanup() {
  local pid
  [[ -n "$SAMPLER_PID" ]] && { kill "$SAMPLER_PID" 2>/dev/null || true; wait "$SAMPLER_PID" 2>/dev/null || true; }
  for pid in "${GEN_PIDS[@]}"; do
    kill -TERM "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  stop_instances
  stop_redis
  drop_pg_db
  if [[ "${KEEP_DB:-0}" == 1 ]]; then log "kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM
ulimit -Sn "$(ulimit -Hn)" 2>/dev/null || true

if [[ "${SKIP_BUILD:-0}" != 1 ]]; then
  log "building release binaries"
  (cd "$ROOT" && cargo build --release -p taskforge -p taskforge-bench)
fi
for bin in "$TASKFORGE_BIN" "$BENCH_BIN"; do
  [[ -x "$bin" ]] || { log "missing binary $bin"; exit 1; }
done
psql_admin 'SELECT 1' >/dev/null 2>&1 || { log "PostgreSQL at $PG_HOST:$PG_PORT is not reachable"; exit 1; }

PG_DB="taskforge_soak_$(date +%s)_$$"
psql_admin "CREATE DATABASE \"$PG_DB\"" >/dev/null
DB_URL="postgres://$PG_USER@$PG_HOST:$PG_PORT/$PG_DB"
start_redis || { log "could not start redis-server"; exit 1; }
start_instances "$INSTANCES" soak || exit 1
URLS=$(IFS=,; echo "${INSTANCE_URLS[*]}")
PIDS=$(IFS=,; echo "${INSTANCE_PIDS[*]}")
log "$INSTANCES instances (pids $PIDS) on $PG_DB and redis pid $REDIS_PID; $SOCKETS sockets over $GENERATORS generator(s), $RATE tasks/s for $MINUTES min, churn $CHURN_PERCENT %/min"

mkdir -p "$OUT_DIR"
"$BENCH_BIN" soak --setup --url "$URLS" --team-file "$WORK/team.json" --users "$USERS"
per_gen=$((SOCKETS / GENERATORS))
for g in $(seq 0 $((GENERATORS - 1))); do
  rate=0
  ((g == 0)) && rate=$RATE
  # Each generator its own 8 source addresses, so that ephemeral ports do not run out.
  timeout --signal=TERM --kill-after=10 "$RUN_CAP" \
    "$BENCH_BIN" soak --url "$URLS" --server-pid "$PIDS" --team-file "$WORK/team.json" \
    --sockets "$per_gen" --rate "$rate" --minutes "$MINUTES" --warmup-minutes "$WARMUP_MINUTES" \
    --churn-percent "$CHURN_PERCENT" --drain-timeout "$DRAIN_TIMEOUT" \
    --source-first $((1 + 8 * g)) --source-addrs 8 --label "gen$g" \
    >"$OUT_DIR/gen$g.json" 2>"$OUT_DIR/gen$g.stderr" &
  GEN_PIDS+=("$!")
done
# Each minute, every instance's heap as its allocator counts it (/metrics), beside the RSS the
# generator samples: growth of the live heap is a leak, growth of the rest is fragmentation.
sample_allocator() {
  local minute=0 k
  while sleep 60; do
    minute=$((minute + 1))
    for k in "${!INSTANCE_URLS[@]}"; do
      curl -fsS --max-time 5 "${INSTANCE_URLS[$k]}/metrics" 2>/dev/null |
        awk -v m="$minute" -v k="$k" -F'[{}" ]+' '/^taskforge_allocator_bytes\{/ { print m, k, $3, $4 }' || true
    done
  done
}
sample_allocator >"$OUT_DIR/allocator.txt" &
SAMPLER_PID=$!
status=0
for k in "${!GEN_PIDS[@]}"; do
  wait "${GEN_PIDS[$k]}" || { log "generator $k exited with status $?; its stderr:"; tail -n 20 "$OUT_DIR/gen$k.stderr" >&2; status=1; }
done
GEN_PIDS=()
kill "$SAMPLER_PID" 2>/dev/null || true
wait "$SAMPLER_PID" 2>/dev/null || true
SAMPLER_PID=""
for k in "${!INSTANCE_PIDS[@]}"; do
  kill -0 "${INSTANCE_PIDS[$k]}" 2>/dev/null || { log "instance $k died; its stderr:"; tail -n 20 "${INSTANCE_ERRS[$k]}" >&2; status=1; }
  problems=$(grep -cE ' (WARN|ERROR) ' "${INSTANCE_ERRS[$k]}" || true)
  ((problems == 0)) || { log "instance $k logged $problems WARN/ERROR lines; the first ones:"; grep -E ' (WARN|ERROR) ' "${INSTANCE_ERRS[$k]}" | head -n 5 >&2; }
done
log "per-minute progress of generator 0:"
grep '^soak: minute' "$OUT_DIR/gen0.stderr" >&2 || true
cat "$OUT_DIR"/gen*.json >"$OUT_DIR/soak.jsonl"
log "reports (JSON lines) in $OUT_DIR/soak.jsonl"
python3 - "$OUT_DIR/allocator.txt" <<'EOF' >&2 || true
import collections, sys
rows = collections.defaultdict(dict)  # (minute, instance) -> kind -> bytes
for line in open(sys.argv[1]):
    minute, inst, kind, value = line.split()
    rows[(int(minute), int(inst))][kind] = float(value)
if rows:
    insts = sorted({i for _, i in rows})
    print("minute  " + "  ".join(f"inst{i} allocated/active/resident MiB" for i in insts))
    for minute in sorted({m for m, _ in rows}):
        cells = []
        for i in insts:
            r = rows.get((minute, i), {})
            cells.append("/".join(f"{r.get(k, 0) / 2**20:.1f}" for k in ("allocated", "active", "resident")).rjust(33))
        print(f"{minute:6d}  " + "  ".join(cells))
EOF
python3 - "$OUT_DIR/soak.jsonl" <<'EOF' || status=1
import json, sys
runs = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
if not runs:
    sys.exit("no generator produced a report")
g0 = runs[0]
print(f"Soak: {sum(r['sockets'] for r in runs)} sockets, {g0['minutes']} min at {g0['rate']} tasks/s, churn {g0['churnPercent']} %/min")
print("minute  " + "  ".join(f"inst{k} RSS MiB" for k in range(len(g0['perMinute'][0]['rssKib']) if g0['perMinute'] else 0)) + "  deliveries/min  reconnects/min")
for m in g0["perMinute"]:
    rss = "  ".join(f"{(r or 0) / 1024:13.1f}" for r in m["rssKib"])
    dl = sum(r["perMinute"][m["minute"] - 1]["deliveries"] for r in runs if len(r["perMinute"]) >= m["minute"])
    rc = sum(r["perMinute"][m["minute"] - 1]["reconnects"] for r in runs if len(r["perMinute"]) >= m["minute"])
    print(f"{m['minute']:6d}  {rss}  {dl:14d}  {rc:14d}")
spread = ", ".join("n/a" if s is None else f"{s:.1f} %" for s in g0["rssSpreadAfterWarmupPct"])
print(f"RSS spread after the warm-up, per instance: {spread}")
tot = lambda k: sum(r[k] for r in runs)
print(f"created {tot('created')}, final seq {max(r['finalSeq'] for r in runs)}, deliveries {tot('deliveries')}, "
      f"lost {tot('lost')}, duplicated {tot('duplicates')}, sockets complete {tot('socketsComplete')}/{tot('sockets')}, "
      f"churn reconnects {tot('churnReconnects')}, other reconnects {tot('otherReconnects')}, replayed {tot('replayed')}")
closes = {}
for r in runs:
    for k, v in r["closes"].items():
        closes[k] = closes.get(k, 0) + v
print(f"closes and connect failures: {closes or 'none'}")
sys.exit(1 if tot('lost') or tot('duplicates') else 0)
EOF
exit "$status"
