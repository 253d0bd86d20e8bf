#!/usr/bin/env bash
# The abuse suite: each attack against a fresh `taskforge serve` (SQLite in a temp dir, a free
# loopback port, the server's default limits) while a normal user works; RUNS runs of every
# attack, then a table of medians. See bench/README.md ("Abuse"). Not part of CI.
# Loopback only (127.0.0.0/8); every attack is bounded in time and count; the generator starts and
# stops the servers itself, and is stopped on exit.
#
# Environment (all optional):
#   RUNS=3  ATTACKS=all (or e.g. "slow-heads,login-storm")  DURATION=25 (s per attack)
#   SLOW_HEADS_DURATION=50  SEED=20000 (stalled-replay: activities in the team's log)
#   GEN_THREADS=1  RSS_CAP_MIB=4096  KEEP_DIR=1 (keep the temp dir with the server logs)
#   SKIP_BUILD=1     do not run cargo build (use the binaries already in the target dir)
#   TASKFORGE_BIN, BENCH_BIN   use these binaries instead of target/release/{taskforge,taskforge-bench}
#   OUT_DIR          where the JSON lines go (default target/bench/abuse-<time>)
#   EXTRA_ARGS       more `taskforge-bench abuse` options, e.g. "--server-env TASKFORGE_LOG=warn"
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
RUNS=${RUNS:-3}
ATTACKS=${ATTACKS:-all}
DURATION=${DURATION:-25}
SLOW_HEADS_DURATION=${SLOW_HEADS_DURATION:-50}
SEED=${SEED:-20000}
GEN_THREADS=${GEN_THREADS:-1}
RSS_CAP_MIB=${RSS_CAP_MIB:-4096}
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
TASKFORGE_BIN=${TASKFORGE_BIN:-$TARGET_DIR/release/taskforge}
BENCH_BIN=${BENCH_BIN:-$TARGET_DIR/release/taskforge-bench}
OUT_DIR=${OUT_DIR:-$TARGET_DIR/bench/abuse-$(date -u +%Y%m%dT%H%M%SZ)}
# Hard cap of one generator run: 8 attacks of setup (the seed at 25 tasks/s or more), window,
# grace, checks and server stop, and slack.
RUN_CAP=$((8 * (DURATION + 90) + SLOW_HEADS_DURATION + SEED / 25 + 120))

log() { printf '[abuse] %s\n' "$*" >&2; }

BENCH_PID=""
# shellcheck disable=SC2317  # invoked by the EXIT trap
cleanup() {
  if [[ -n "$BENCH_PID" ]]; then
    kill -TERM "$BENCH_PID" 2>/dev/null || true # `timeout` passes it on; the generator's servers die with it
    wait "$BENCH_PID" 2>/dev/null || true
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM
ulimit -Sn "$(ulimit -Hn)" 2>/dev/null || true

if [[ "${SKIP_BUILD:-0}" != 1 ]]; then
  log "building release binaries"
  (cd "$ROOT" && cargo build --release --bin taskforge -p taskforge -p taskforge-bench)
fi
for bin in "$TASKFORGE_BIN" "$BENCH_BIN"; do
  [[ -x "$bin" ]] || { log "missing binary $bin"; exit 1; }
done
mkdir -p "$OUT_DIR"
attack_args=()
if [[ "$ATTACKS" != all ]]; then
  attack_args=(--attack "$ATTACKS")
fi
keep_args=()
[[ "${KEEP_DIR:-0}" == 1 ]] && keep_args=(--keep-dir)
# shellcheck disable=SC2206  # EXTRA_ARGS is split on purpose
extra=(${EXTRA_ARGS:-})
log "JSON lines in $OUT_DIR/abuse.jsonl; runs=$RUNS attacks=$ATTACKS duration=${DURATION}s seed=$SEED; server $TASKFORGE_BIN"
log "commit $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown); load average $(cut -d' ' -f1-3 /proc/loadavg)"

status=0
for run in $(seq 1 "$RUNS"); do
  if pgrep -x rustc >/dev/null 2>&1 || pgrep -x cc1 >/dev/null 2>&1; then
    log "warning: compilers are running on this machine; the figures will be noisy"
  fi
  log "run $run/$RUNS"
  # In the background, so that a signal to this script is handled at once (see cleanup).
  timeout --signal=TERM --kill-after=20 "$RUN_CAP" \
    "$BENCH_BIN" --threads "$GEN_THREADS" abuse --server-bin "$TASKFORGE_BIN" \
    "${attack_args[@]}" --duration "$DURATION" --slow-heads-duration "$SLOW_HEADS_DURATION" \
    --seed-activities "$SEED" --rss-cap-mib "$RSS_CAP_MIB" --label "run$run" \
    --json-out "$OUT_DIR/abuse.jsonl" "${keep_args[@]}" "${extra[@]}" \
    >"$OUT_DIR/run$run.table" 2>"$OUT_DIR/run$run.stderr" &
  BENCH_PID=$!
  rc=0
  wait "$BENCH_PID" || rc=$?
  BENCH_PID=""
  grep -E '^\[abuse\] [a-z-]+: (worst|could not)' "$OUT_DIR/run$run.stderr" >&2 || true
  if ((rc == 4)); then
    log "run $run: committed tasks were lost (or the check failed): see the table"
  elif ((rc != 0)); then
    log "run $run: the generator exited with status $rc; its stderr ends with:"
    tail -n 20 "$OUT_DIR/run$run.stderr" >&2 || true
    status=1
  fi
done

if [[ -s "$OUT_DIR/abuse.jsonl" ]]; then
  echo
  echo "Medians over $RUNS run(s) ($(date -u +%Y-%m-%d), commit $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)):"
  "$BENCH_BIN" abuse --summarize "$OUT_DIR/abuse.jsonl"
else
  log "no attack produced a report"
  status=1
fi
exit "$status"
