# shellcheck shell=bash
# Shared by the bench scripts (sourced, not run). The caller defines `log`, `WORK` and
# `TASKFORGE_BIN`, and sets `SERVER_PID=""` before the first start.

# stop_pid PID: SIGTERM, then SIGKILL after 5 s (nothing for an empty PID).
stop_pid() {
  [[ -n "$1" ]] || return 0
  if kill -0 "$1" 2>/dev/null; then
    kill -TERM "$1" 2>/dev/null || true
    for _ in $(seq 1 50); do
      kill -0 "$1" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL "$1" 2>/dev/null || true
  fi
  wait "$1" 2>/dev/null || true
}

stop_server() {
  stop_pid "$SERVER_PID"
  SERVER_PID=""
}

# start_server DATABASE_URL NAME [ENV=VALUE ...]: starts the server on a free loopback port with
# the given extra environment; sets SERVER_PID, SERVER_URL and SERVER_ERR (its stderr file).
start_server() {
  local out="$WORK/$2.stdout"
  SERVER_ERR="$WORK/$2.stderr"
  # The load comes from a few loopback addresses: the per-address and per-email limits are off.
  env TASKFORGE_LISTEN=127.0.0.1:0 \
    TASKFORGE_AUTH_LIMIT_PER_IP=0 TASKFORGE_AUTH_LIMIT_PER_EMAIL=0 TASKFORGE_CONNECT_LIMIT_PER_IP=0 \
    TASKFORGE_DATABASE_URL="$1" \
    TASKFORGE_JWT_SECRET="bench-jwt-secret-$RANDOM$RANDOM-0123456789abcdefghijklmnop" \
    "${@:3}" \
    "$TASKFORGE_BIN" serve >"$out" 2>"$SERVER_ERR" &
  SERVER_PID=$!
  SERVER_URL=""
  for _ in $(seq 1 300); do # 30 s
    SERVER_URL=$(sed -n 's#^taskforge listening on \(http://[^ ]*\).*#\1#p' "$out" | head -n 1)
    [[ -n "$SERVER_URL" ]] && break
    if ! kill -0 "$SERVER_PID" 2>/dev/null; then
      log "the server exited before it was ready; its stderr:"
      tail -n 30 "$SERVER_ERR" >&2
      SERVER_PID=""
      return 1
    fi
    sleep 0.1
  done
  if [[ -z "$SERVER_URL" ]]; then
    log "the server printed no ready line within 30 s; its stderr:"
    tail -n 30 "$SERVER_ERR" >&2
    stop_server
    return 1
  fi
  case "$SERVER_URL" in
    http://127.*) ;;
    *) log "the server is not on loopback: $SERVER_URL"; stop_server; return 1 ;;
  esac
}

# busy_compilers: true while a compiler runs (figures taken then are noisy).
busy_compilers() {
  pgrep -x rustc >/dev/null 2>&1 || pgrep -x cc1 >/dev/null 2>&1 || pgrep -x cc1plus >/dev/null 2>&1
}
