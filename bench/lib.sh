# shellcheck shell=bash
# Shared by the bench scripts (sourced, not run). The caller defines `log`, `WORK` and
# `TASKFORGE_BIN` (and `BENCH_BIN` for the floor), and sets `SERVER_PID=""` before the first start.

PEER_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/socketio-peer

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

# start_listener NAME CMD...: starts a server command that prints `... listening on http://...`
# on stdout once it serves (TaskForge, the Socket.IO peer, the floor); sets SERVER_PID,
# SERVER_URL and SERVER_ERR (its stderr file). Fails unless it is ready on loopback within
# READY_SECS seconds (default 30; a database written behind the server's back may need longer).
start_listener() {
  local out="$WORK/$1.stdout"
  SERVER_ERR="$WORK/$1.stderr"
  "${@:2}" >"$out" 2>"$SERVER_ERR" &
  SERVER_PID=$!
  SERVER_URL=""
  local ready_secs=${READY_SECS:-30}
  for _ in $(seq 1 $((ready_secs * 10))); do
    SERVER_URL=$(sed -n 's#^.*listening on \(http://[^ ]*\).*#\1#p' "$out" | head -n 1)
    [[ -n "$SERVER_URL" ]] && break
    if ! kill -0 "$SERVER_PID" 2>/dev/null; then
      log "$1 exited before it was ready; its stderr:"
      tail -n 30 "$SERVER_ERR" >&2
      SERVER_PID=""
      return 1
    fi
    sleep 0.1
  done
  if [[ -z "$SERVER_URL" ]]; then
    log "$1 printed no ready line within $ready_secs s; its stderr:"
    tail -n 30 "$SERVER_ERR" >&2
    stop_server
    return 1
  fi
  case "$SERVER_URL" in
    http://127.*) ;;
    *) log "$1 is not on loopback: $SERVER_URL"; stop_server; return 1 ;;
  esac
}

# start_server DATABASE_URL NAME [ENV=VALUE ...]: starts TaskForge on a free loopback port with
# the given extra environment (see start_listener).
start_server() {
  # The load comes from a few loopback addresses: the per-address and per-email limits are off.
  start_listener "$2" env TASKFORGE_LISTEN=127.0.0.1:0 \
    TASKFORGE_AUTH_LIMIT_PER_IP=0 TASKFORGE_AUTH_LIMIT_PER_EMAIL=0 TASKFORGE_CONNECT_LIMIT_PER_IP=0 \
    TASKFORGE_DATABASE_URL="$1" \
    TASKFORGE_JWT_SECRET="bench-jwt-secret-$RANDOM$RANDOM-0123456789abcdefghijklmnop" \
    "${@:3}" \
    "$TASKFORGE_BIN" serve
}

# start_peer NAME SECRET [ENV=VALUE ...]: the Socket.IO peer (bench/socketio-peer) with that JWT
# secret (see start_listener). Its npm dependencies must be installed (install_peer).
start_peer() {
  start_listener "$1" env PORT=0 HOST=127.0.0.1 JWT_SECRET="$2" "${@:3}" \
    node "$PEER_DIR/server.js"
}

# start_floor NAME: the bare-write floor (`taskforge-bench floor`; see start_listener).
start_floor() {
  start_listener "$1" "$BENCH_BIN" floor --listen 127.0.0.1:0
}

# install_peer: the peer's npm dependencies, exactly as locked, once.
install_peer() {
  command -v node >/dev/null || { log "node is needed for the Socket.IO peer"; return 1; }
  if [[ ! -d "$PEER_DIR/node_modules" ]]; then
    log "installing the Socket.IO peer's dependencies (npm ci)"
    (cd "$PEER_DIR" && npm ci --no-audit --no-fund >&2)
  fi
}

# busy_compilers: true while a compiler runs (figures taken then are noisy).
busy_compilers() {
  pgrep -x rustc >/dev/null 2>&1 || pgrep -x cc1 >/dev/null 2>&1 || pgrep -x cc1plus >/dev/null 2>&1
}

# Fresh databases for scripts that run each measurement on its own: a SQLite file under $WORK, or
# a PostgreSQL database made through PG_ADMIN_DB and dropped after the run. The caller sets WORK,
# PG_HOST, PG_PORT, PG_USER, PG_ADMIN_DB, and DB_PREFIX (the new databases' name prefix).
PG_DB=""
DB_URL=""
BENCH_PID=""

psql_admin() {
  PGCONNECT_TIMEOUT=5 timeout 60 psql -h "$PG_HOST" -p "$PG_PORT" -U "$PG_USER" -d "$PG_ADMIN_DB" \
    -v ON_ERROR_STOP=1 -Atqc "$1"
}

# new_db BACKEND: a fresh, empty database for one run; sets DB_URL.
new_db() {
  case "$1" in
    sqlite)
      rm -f "$WORK"/run.db*
      DB_URL="sqlite://$WORK/run.db"
      ;;
    postgres)
      PG_DB="${DB_PREFIX:-taskforge_bench}_$(date +%s)_$$"
      psql_admin "CREATE DATABASE \"$PG_DB\"" >/dev/null
      DB_URL="postgres://$PG_USER@$PG_HOST:$PG_PORT/$PG_DB"
      ;;
    *)
      log "unknown backend $1 (expected sqlite or postgres)"
      return 1
      ;;
  esac
}

drop_db() {
  if [[ -n "$PG_DB" ]]; then
    psql_admin "DROP DATABASE IF EXISTS \"$PG_DB\" WITH (FORCE)" >/dev/null 2>&1 || true
  fi
  PG_DB=""
  rm -f "$WORK"/run.db*
}

# run_cleanup: the EXIT trap of such scripts: stops the generator (BENCH_PID) and the server,
# drops the run's database and removes WORK (kept with KEEP_DB=1).
# shellcheck disable=SC2317  # invoked by the EXIT trap
run_cleanup() {
  if [[ -n "$BENCH_PID" ]]; then
    kill -TERM "$BENCH_PID" 2>/dev/null || true # `timeout` passes it on to the generator
    wait "$BENCH_PID" 2>/dev/null || true
  fi
  stop_server
  drop_db
  if [[ "${KEEP_DB:-0}" == 1 ]]; then
    log "kept $WORK"
  else
    rm -rf "$WORK"
  fi
}
