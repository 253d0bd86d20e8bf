# shellcheck shell=bash
# Shared by the scripts that run several instances on one PostgreSQL database and one Redis
# (cluster-fanout.sh, soak.sh); sourced after lib.sh. The caller defines `log`, `WORK`,
# `PG_HOST`/`PG_PORT`/`PG_USER`/`PG_ADMIN_DB`, `REDIS_SERVER`/`REDIS_CLI`, `JWT_SECRET`,
# `WS_QUEUE_LIMIT` and `DB_URL`. Extra environment for the instances: `INSTANCE_ENV` (an array of
# ENV=VALUE, set after sourcing).

case "$PG_HOST" in
  127.* | localhost | ::1) ;;
  *) echo "PG_HOST must be a loopback address (got $PG_HOST)" >&2; exit 2 ;;
esac

# What this file starts, for the caller's cleanup (`psql_admin` is lib.sh's).
PG_DB=""
REDIS_PID=""
REDIS_PORT=""
REDIS_CLUSTER_PIDS=()
REDIS_CLUSTER_PORTS=()
INSTANCE_PIDS=()
INSTANCE_URLS=()
INSTANCE_ERRS=()
INSTANCE_ENV=()

rcli() { timeout 5 "$REDIS_CLI" -h 127.0.0.1 -p "$REDIS_PORT" "$@"; }

# stop_instances: SIGTERM to all, SIGKILL to those still there after 15 s.
stop_instances() {
  local pid alive
  for pid in "${INSTANCE_PIDS[@]}"; do
    kill -TERM "$pid" 2>/dev/null || true
  done
  for _ in $(seq 1 150); do
    alive=0
    for pid in "${INSTANCE_PIDS[@]}"; do
      kill -0 "$pid" 2>/dev/null && alive=1
    done
    ((alive)) || break
    sleep 0.1
  done
  for pid in "${INSTANCE_PIDS[@]}"; do
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  INSTANCE_PIDS=()
  INSTANCE_URLS=()
  INSTANCE_ERRS=()
}

stop_redis() {
  local pid
  stop_pid "$REDIS_PID"
  REDIS_PID=""
  for pid in "${REDIS_CLUSTER_PIDS[@]}"; do
    stop_pid "$pid"
  done
  REDIS_CLUSTER_PIDS=()
  REDIS_CLUSTER_PORTS=()
}

# free_port: a random loopback port in 20000-59999 that nothing answers on.
free_port() {
  local port
  while :; do
    port=$((20000 + (RANDOM * 32768 + RANDOM) % 40000))
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null || { echo "$port"; return; }
  done
}

# start_redis_cluster: a Redis Cluster of 3 primaries and 3 replicas (redis-server nodes on free
# loopback ports, joined by `redis-cli --cluster create`); sets REDIS_CLUSTER_PORTS/PIDS, and
# REDIS_PORT to the first node. The instances then get TASKFORGE_REDIS_CLUSTER.
start_redis_cluster() {
  local k port bus args=() ok
  for k in $(seq 0 5); do
    port=$(free_port)
    bus=$(free_port)
    "$REDIS_SERVER" --bind 127.0.0.1 --port "$port" --cluster-enabled yes --cluster-port "$bus" \
      --cluster-config-file "nodes-$port.conf" --cluster-node-timeout 5000 --save "" \
      --appendonly no --daemonize no --dir "$WORK" --logfile "$WORK/redis-$port.log" \
      >/dev/null 2>&1 &
    REDIS_CLUSTER_PIDS+=($!)
    REDIS_CLUSTER_PORTS+=("$port")
    args+=("127.0.0.1:$port")
    for _ in $(seq 1 50); do
      [[ "$(timeout 5 "$REDIS_CLI" -p "$port" ping 2>/dev/null)" == PONG ]] && break
      sleep 0.1
    done
  done
  timeout 60 "$REDIS_CLI" --cluster create "${args[@]}" --cluster-replicas 1 --cluster-yes \
    >"$WORK/cluster-create.log" 2>&1 || { tail -n 5 "$WORK/cluster-create.log" >&2; return 1; }
  for _ in $(seq 1 300); do # 30 s
    ok=1
    for port in "${REDIS_CLUSTER_PORTS[@]}"; do
      timeout 5 "$REDIS_CLI" -p "$port" cluster info 2>/dev/null | grep -q '^cluster_state:ok' || ok=0
    done
    ((ok)) && { REDIS_PORT=${REDIS_CLUSTER_PORTS[0]}; return 0; }
    sleep 0.1
  done
  return 1
}

# redis_nodes_json: per Redis node (primaries only on a cluster) the publishes and script calls
# it ran and its CPU seconds so far, as a JSON array.
redis_nodes_json() {
  local port ports=("${REDIS_CLUSTER_PORTS[@]}") out="[" sep=""
  ((${#ports[@]})) || ports=("$REDIS_PORT")
  for port in "${ports[@]}"; do
    local info
    info=$(timeout 5 "$REDIS_CLI" -p "$port" info all 2>/dev/null | tr -d '\r')
    grep -q '^role:master' <<<"$info" || continue
    out+=$(awk -F'[:=,]' -v port="$port" -v sep="$sep" '
      /^cmdstat_publish:/ { pub += $3 }
      /^cmdstat_spublish:/ { pub += $3 }
      /^cmdstat_evalsha:/ { scripts += $3 }
      /^used_cpu_sys:/ { cpu += $2 }
      /^used_cpu_user:/ { cpu += $2 }
      END { printf "%s{\"port\":%s,\"publishes\":%d,\"scripts\":%d,\"cpuSec\":%.3f}", sep, port, pub, scripts, cpu }
    ' <<<"$info")
    sep=","
  done
  echo "$out]"
}

drop_pg_db() {
  if [[ -n "$PG_DB" && "${KEEP_DB:-0}" != 1 ]]; then
    psql_admin "DROP DATABASE IF EXISTS \"$PG_DB\" WITH (FORCE)" >/dev/null 2>&1 || true
  elif [[ -n "$PG_DB" ]]; then
    log "kept database $PG_DB"
  fi
  PG_DB=""
}

# start_redis: redis-server on a free loopback port, without persistence; sets REDIS_PID/PORT.
start_redis() {
  local attempt port
  for attempt in $(seq 1 10); do
    port=$((20000 + (RANDOM * 32768 + RANDOM) % 40000))
    # Taken if something answers there.
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      continue
    fi
    "$REDIS_SERVER" --bind 127.0.0.1 --port "$port" --protected-mode yes --save "" \
      --appendonly no --daemonize no --dir "$WORK" --logfile "$WORK/redis.log" \
      >/dev/null 2>&1 &
    REDIS_PID=$!
    REDIS_PORT=$port
    for _ in $(seq 1 50); do # 5 s
      if ! kill -0 "$REDIS_PID" 2>/dev/null; then
        break
      fi
      if [[ "$(rcli ping 2>/dev/null)" == PONG ]]; then
        return 0
      fi
      sleep 0.1
    done
    log "redis-server did not come up on port $port (attempt $attempt); its log:"
    tail -n 5 "$WORK/redis.log" >&2 2>/dev/null || true
    stop_redis
  done
  return 1
}

# start_instances N NAME: N instances on the database and Redis, the first alone first (it
# applies the migrations); sets INSTANCE_PIDS/URLS/ERRS.
start_instances() {
  local n=$1 name=$2 k
  for k in $(seq 0 $((n - 1))); do
    local bus="TASKFORGE_REDIS_URL=redis://127.0.0.1:$REDIS_PORT" port nodes=""
    if ((${#REDIS_CLUSTER_PORTS[@]})); then
      for port in "${REDIS_CLUSTER_PORTS[@]}"; do nodes+="${nodes:+,}redis://127.0.0.1:$port"; done
      bus="TASKFORGE_REDIS_CLUSTER=$nodes"
    fi
    if ! start_server "$DB_URL" "$name-i$k" TASKFORGE_JWT_SECRET="$JWT_SECRET" "$bus" \
      TASKFORGE_WS_QUEUE_LIMIT="$WS_QUEUE_LIMIT" "${INSTANCE_ENV[@]}"; then
      log "instance $k of $name did not start"
      return 1
    fi
    INSTANCE_PIDS+=("$SERVER_PID")
    INSTANCE_URLS+=("$SERVER_URL")
    INSTANCE_ERRS+=("$SERVER_ERR")
    SERVER_PID="" # stopped by stop_instances
  done
}

# start_peers N NAME: N instances of the Socket.IO peer with the Redis adapter on this Redis and
# the same JWT secret; sets INSTANCE_PIDS/URLS/ERRS like start_instances.
start_peers() {
  local n=$1 name=$2 k
  for k in $(seq 0 $((n - 1))); do
    if ! start_peer "$name-p$k" "$JWT_SECRET" REDIS_URL="redis://127.0.0.1:$REDIS_PORT"; then
      log "peer $k of $name did not start"
      return 1
    fi
    INSTANCE_PIDS+=("$SERVER_PID")
    INSTANCE_URLS+=("$SERVER_URL")
    INSTANCE_ERRS+=("$SERVER_ERR")
    SERVER_PID="" # stopped by stop_instances
  done
}
