#!/usr/bin/env bash
# What notifying a task's followers costs comment creation: POST /api/v1/tasks/{taskId}/comments
# on a task with 0, 10 and 50 followers, against the same request on the build from before
# notifications existed, on SQLite and PostgreSQL. See bench/README.md. Loopback only; every run
# is bounded in time; the server is stopped on exit.
#
# Variants (run labels are VARIANT/MODE):
#   base-f0  the server built from BASE_REV (it notifies nobody); nobody but the commenter follows
#   fN       this tree's server; N of the team's MEMBERS members follow the task (N in FOLLOWERS)
# Every variant has the same team: an owner, who creates the task and comments on it, and MEMBERS
# members; only how many of them follow the task changes.
# Modes:
#   max    closed loop, CONCURRENCY connections: throughput
#   paced  open loop at PACED_RATE for every variant: latency at a load they all carry
#          (default: half the median max-mode rate of the slowest variant of the backend)
# Each run gets a fresh database and a fresh server. Each round runs every variant once, in an
# order rotated by the round; `taskforge-bench ratios` divides each run's figures by those of the
# base-f0 run of its round and prints the medians of these ratios.
#
# Environment (all optional):
#   RUNS=5  DURATION=10  WARMUP=2 (whole seconds)  CONCURRENCY=32  GEN_THREADS=1
#   FOLLOWERS="0 10 50"  MEMBERS (default: the largest of FOLLOWERS)
#   MODES="max paced"  PACED_RATE (default: see above)  BACKENDS="sqlite postgres"
#   BASE_REV   the commit before notifications (default: the parent of the oldest commit whose
#              subject starts with "Inbox:")
#   BASE_BIN   the server binary for base-f0 (default: built once from BASE_REV, from a `git
#              archive` of it, into target/bench-base/taskforge-<commit>)
#   NO_BASE=1  leave base-f0 out (ratios are then to f0)
#   PG_HOST=127.0.0.1 PG_PORT=5432 PG_USER=postgres PG_ADMIN_DB=test   (where to CREATE DATABASE)
#   KEEP_DB=1  keep the temp dir with each run's server log (databases are dropped after each run)
#   SKIP_BUILD=1, TASKFORGE_BIN, BENCH_BIN, OUT_DIR (default target/bench/comment-notify-<time>)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
RUNS=${RUNS:-5}
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
CONCURRENCY=${CONCURRENCY:-32}
GEN_THREADS=${GEN_THREADS:-1}
FOLLOWERS=${FOLLOWERS:-0 10 50}
MODES=${MODES:-max paced}
BACKENDS=${BACKENDS:-sqlite postgres}
PG_HOST=${PG_HOST:-127.0.0.1}
PG_PORT=${PG_PORT:-5432}
PG_USER=${PG_USER:-postgres}
PG_ADMIN_DB=${PG_ADMIN_DB:-test}
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
TASKFORGE_BIN=${TASKFORGE_BIN:-$TARGET_DIR/release/taskforge}
BENCH_BIN=${BENCH_BIN:-$TARGET_DIR/release/taskforge-bench}
OUT_DIR=${OUT_DIR:-$TARGET_DIR/bench/comment-notify-$(date -u +%Y%m%dT%H%M%SZ)}
REQUEST_TIMEOUT=10
read -ra FOLLOWER_COUNTS <<<"$FOLLOWERS"
MEMBERS=${MEMBERS:-$(printf '%s\n' "${FOLLOWER_COUNTS[@]}" | sort -n | tail -n 1)}
MEMBERS=${MEMBERS:-0}
# Hard cap for one benchmark run: setup (MEMBERS sign-ups) + warmup + window + drain + slack.
RUN_CAP=$((WARMUP + DURATION + REQUEST_TIMEOUT + 120 + MEMBERS))

case "$PG_HOST" in
  127.* | localhost | ::1) ;;
  *) echo "PG_HOST must be a loopback address (got $PG_HOST)" >&2; exit 2 ;;
esac

log() { printf '[comment-notify] %s\n' "$*" >&2; }

WORK=$(mktemp -d "${TMPDIR:-/tmp}/taskforge-bench.XXXXXX")
SERVER_PID=""
# shellcheck source=bench/lib.sh
source "$(dirname "$0")/lib.sh"
DB_PREFIX=taskforge_bench
trap run_cleanup EXIT
trap 'exit 130' INT TERM

# build_base: sets BASE_BIN to the server of BASE_REV, building it once from a `git archive` of
# that commit. Built before this tree, in the same target dir, so the dependencies are shared;
# this tree's build afterwards puts its own binary back in target/release.
build_base() {
  if [[ -z "${BASE_REV:-}" ]]; then
    local inbox
    # The oldest such commit: later ones (fixes, speed-ups) are part of what is measured.
    inbox=$(git -C "$ROOT" log --reverse --format='%H %s' | awk '$2 == "Inbox:" && !found { print $1; found = 1 }')
    [[ -n "$inbox" ]] || { log "no commit starting with \"Inbox:\" found: set BASE_REV or BASE_BIN"; return 1; }
    BASE_REV="$inbox^"
  fi
  local rev
  rev=$(git -C "$ROOT" rev-parse --verify "$BASE_REV^{commit}")
  BASE_BIN=$TARGET_DIR/bench-base/taskforge-${rev:0:12}
  if [[ -x "$BASE_BIN" ]]; then
    log "baseline server $BASE_BIN (commit ${rev:0:12})"
    return 0
  fi
  if [[ "${SKIP_BUILD:-0}" == 1 ]]; then
    log "no baseline binary $BASE_BIN and SKIP_BUILD=1"
    return 1
  fi
  log "building the baseline server from commit ${rev:0:12}"
  mkdir -p "$WORK/base-src" "$TARGET_DIR/bench-base"
  git -C "$ROOT" archive "$rev" | tar -x -C "$WORK/base-src"
  (cd "$WORK/base-src" && CARGO_TARGET_DIR=$TARGET_DIR cargo build --release --locked --bin taskforge)
  cp "$TARGET_DIR/release/taskforge" "$BASE_BIN.tmp"
  mv "$BASE_BIN.tmp" "$BASE_BIN"
  rm -rf "$WORK/base-src"
}

# bench LABEL ROUND ARGS...: one run of the generator against SERVER_URL; appends its JSON line
# to OUT_DIR/BACKEND.jsonl (BACKEND from the caller).
bench() {
  local label=$1 round=$2 results="$OUT_DIR/$BACKEND.jsonl"
  shift 2
  local line rc=0
  # In the background, so that a signal to this script is handled at once (see cleanup).
  timeout --signal=TERM --kill-after=5 "$RUN_CAP" \
    "$BENCH_BIN" --threads "$GEN_THREADS" writes --write comment --url "$SERVER_URL" \
    --server-pid "$SERVER_PID" --warmup "$WARMUP" --duration "$DURATION" \
    --timeout "$REQUEST_TIMEOUT" --concurrency "$CONCURRENCY" --members "$MEMBERS" \
    --label "$label" --round "$round" --json "$@" >"$WORK/run.json" &
  BENCH_PID=$!
  wait "$BENCH_PID" || rc=$?
  BENCH_PID=""
  line=$(tail -n 1 "$WORK/run.json")
  if [[ -n "$line" ]]; then
    printf '%s\n' "$line" >>"$results"
    printf '%s\n' "$line" | "$BENCH_BIN" summarize | tail -n 1 | sed 's/^/    /' >&2
    if [[ "$line" == *'"ok":false'* ]]; then
      log "run $label: the followers' inbox seqs differ from the comments created (see its inbox field)"
    fi
  fi
  if ((rc != 0)); then
    log "run $label exited with status $rc; the server's last log lines:"
    tail -n 5 "$SERVER_ERR" >&2 || true
  fi
  if ! kill -0 "$SERVER_PID" 2>/dev/null; then
    log "the server died during run $label"
    return 1
  fi
}

# one_run VARIANT MODE ROUND [GENERATOR ARGS...]: a fresh database and server for one run.
one_run() {
  local variant=$1 mode=$2 round=$3 bin followers rc=0
  shift 3
  case "$variant" in
    base-f0) bin=$BASE_BIN followers=0 ;;
    f*) bin=$TASKFORGE_BIN followers=${variant#f} ;;
    *) log "unknown variant $variant"; return 1 ;;
  esac
  new_db "$BACKEND"
  # The setup adds MEMBERS members by email at once: that limit is off too.
  TASKFORGE_BIN=$bin start_server "$DB_URL" "$BACKEND-$variant-$mode-$round" \
    TASKFORGE_MEMBER_EMAIL_LIMIT_PER_USER=0 || { drop_db; return 1; }
  local compilers=no
  busy_compilers && compilers=yes
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$(date -u +%H:%M:%S)" "$variant/$mode" "$round" \
    "$(cut -d' ' -f1-3 /proc/loadavg)" "$compilers" "$(nproc)" >>"$OUT_DIR/$BACKEND.load.tsv"
  log "$BACKEND round $round/$RUNS: $variant/$mode (load $(cut -d' ' -f1 /proc/loadavg), compilers running: $compilers)"
  bench "$variant/$mode" "$round" --followers "$followers" "$@" || rc=$?
  stop_server
  drop_db
  return "$rc"
}

# rotated ROUND WORDS...: the words, starting at the (ROUND-1)-th, wrapping around.
rotated() {
  local round=$1
  shift
  local words=("$@") n=$# i
  for ((i = 0; i < n; i++)); do
    printf '%s ' "${words[$(((round - 1 + i) % n))]}"
  done
}

run_backend() {
  BACKEND=$1
  local results="$OUT_DIR/$BACKEND.jsonl" round v
  if [[ "$BACKEND" == postgres ]] && { ! command -v psql >/dev/null || ! psql_admin 'SELECT 1' >/dev/null 2>&1; }; then
    log "PostgreSQL at $PG_HOST:$PG_PORT (user $PG_USER, db $PG_ADMIN_DB) is not reachable: skipping it"
    return 0
  fi
  printf 'time\tlabel\tround\tload1 load5 load15\tcompilers\tcores\n' >"$OUT_DIR/$BACKEND.load.tsv"
  if [[ " $MODES " == *" max "* ]]; then
    for round in $(seq 1 "$RUNS"); do
      for v in $(rotated "$round" "${VARIANTS[@]}"); do
        one_run "$v" max "$round" || return 1
      done
    done
  fi
  if [[ " $MODES " == *" paced "* ]]; then
    local rate=${PACED_RATE:-}
    if [[ -z "$rate" ]]; then
      local slowest="" t
      for v in "${VARIANTS[@]}"; do
        t=$("$BENCH_BIN" summarize --label "$v/max" --field /throughput "$results" 2>/dev/null || echo 0)
        slowest=$(awk -v a="$slowest" -v b="$t" 'BEGIN { print (a == "" || b + 0 < a + 0) ? b : a }')
      done
      rate=$(awk -v x="${slowest:-0}" 'BEGIN { r = int(x / 2); print (r > 0 ? r : 0) }')
    fi
    if ((rate > 0)); then
      log "$BACKEND: paced runs at $rate comments/s"
      for round in $(seq 1 "$RUNS"); do
        for v in $(rotated "$round" "${VARIANTS[@]}"); do
          one_run "$v" paced "$round" --rate "$rate" || return 1
        done
      done
    else
      log "$BACKEND: no rate for the paced runs (set PACED_RATE or run the max mode): skipping them"
    fi
  fi
}

VARIANTS=()
if [[ "${NO_BASE:-0}" != 1 ]]; then
  if [[ -n "${BASE_BIN:-}" ]]; then
    log "baseline server $BASE_BIN"
  else
    build_base
  fi
  VARIANTS=(base-f0)
fi
for n in "${FOLLOWER_COUNTS[@]}"; do
  ((n <= MEMBERS)) || { log "FOLLOWERS $n exceeds MEMBERS $MEMBERS"; exit 2; }
  VARIANTS+=("f$n")
done
((${#VARIANTS[@]} > 0)) || { log "no variant to run (FOLLOWERS is empty and NO_BASE=1)"; exit 2; }
BASE_VARIANT=${VARIANTS[0]}

if [[ "${SKIP_BUILD:-0}" != 1 ]]; then
  log "building release binaries"
  (cd "$ROOT" && cargo build --release -p taskforge -p taskforge-bench)
fi
for bin in "$TASKFORGE_BIN" "$BENCH_BIN" ${BASE_BIN:+"$BASE_BIN"}; do
  [[ -x "$bin" ]] || { log "missing binary $bin"; exit 1; }
done
if [[ -n "${BASE_BIN:-}" ]] && cmp -s "$BASE_BIN" "$TASKFORGE_BIN"; then
  log "the baseline and this tree's server are the same binary: is $TASKFORGE_BIN this tree's?"
  exit 1
fi
mkdir -p "$OUT_DIR"
log "results (JSON lines) in $OUT_DIR; variants: ${VARIANTS[*]}; members $MEMBERS; runs=$RUNS duration=${DURATION}s warmup=${WARMUP}s"

status=0
for backend in $BACKENDS; do
  run_backend "$backend" || { status=1; stop_server; drop_db; }
done

echo
echo "POST /api/v1/tasks/{taskId}/comments on a task with followers, $RUNS runs of ${DURATION} s per point"
echo "($(nproc) cores, generator beside the server; load averages per run in $OUT_DIR/<backend>.load.tsv)"
for backend in $BACKENDS; do
  results="$OUT_DIR/$backend.jsonl"
  [[ -s "$results" ]] || continue
  echo
  echo "== $backend: medians =="
  "$BENCH_BIN" summarize "$results"
  echo
  echo "== $backend: medians, and medians of the per-round ratios to $BASE_VARIANT =="
  "$BENCH_BIN" ratios --base "$BASE_VARIANT" "$results"
done
exit "$status"
