#!/usr/bin/env bash
# Starts, stops and reports the real backends the tests talk to: loopback
# only, on ports of the project's own (never the machine's 6379), with data
# under $MULTISESSION_SERVICES_DIR. Installs missing servers from Debian.
#
#   scripts/services.sh start    start what is not running (idempotent)
#   scripts/services.sh stop     stop everything this script started
#   scripts/services.sh status   say what answers
#   scripts/services.sh env      print the variables the tests read
set -euo pipefail

DIR="${MULTISESSION_SERVICES_DIR:-/tmp/multisession-services}"
REDIS_PORT="${MULTISESSION_REDIS_PORT:-6390}"
CLUSTER_PORTS=(6391 6392 6393)   # each also needs its port + 10000 free

log() { printf 'services: %s\n' "$*" >&2; }
fail() { log "$*"; exit 1; }

install() { # install PACKAGE unless BINARY exists
  command -v "$2" >/dev/null && return 0
  log "installing $1 from Debian"
  command -v apt-get >/dev/null || fail "$2 is missing and apt-get is not available: install $1 by hand"
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$1" >/dev/null
  command -v "$2" >/dev/null || fail "installing $1 did not provide $2"
}

redis_up() { redis-cli -p "$1" ping 2>/dev/null | grep -q PONG; }

start_redis() { # PORT [extra redis-server options]
  local port=$1; shift
  redis_up "$port" && return 0
  local dir="$DIR/redis-$port"
  mkdir -p "$dir"
  redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no --dir "$dir" \
    --pidfile "$dir/redis.pid" --logfile "$dir/redis.log" --daemonize yes "$@"
  for _ in $(seq 50); do redis_up "$port" && return 0; sleep 0.1; done
  fail "redis on port $port did not start; see $dir/redis.log"
}

stop_redis() {
  local port=$1
  redis_up "$port" || return 0
  redis-cli -p "$port" shutdown nosave >/dev/null 2>&1 || true
  for _ in $(seq 50); do redis_up "$port" || return 0; sleep 0.1; done
  fail "redis on port $port did not stop"
}

cluster_ok() {
  local port
  for port in "${CLUSTER_PORTS[@]}"; do
    local info
    info=$(redis-cli -p "$port" cluster info 2>/dev/null) || return 1
    grep -q 'cluster_state:ok' <<<"$info" || return 1
    grep -q 'cluster_known_nodes:3' <<<"$info" || return 1
  done
}

start_cluster() {
  local port
  for port in "${CLUSTER_PORTS[@]}"; do
    start_redis "$port" --cluster-enabled yes --cluster-config-file "$DIR/redis-$port/nodes.conf" \
      --cluster-node-timeout 2000
  done
  cluster_ok && return 0
  log "forming a 3-master Redis Cluster on ports ${CLUSTER_PORTS[*]}"
  for port in "${CLUSTER_PORTS[@]}"; do
    redis-cli -p "$port" flushall >/dev/null
    redis-cli -p "$port" cluster reset hard >/dev/null
  done
  redis-cli -p "${CLUSTER_PORTS[0]}" cluster addslotsrange 0 5460 >/dev/null
  redis-cli -p "${CLUSTER_PORTS[1]}" cluster addslotsrange 5461 10922 >/dev/null
  redis-cli -p "${CLUSTER_PORTS[2]}" cluster addslotsrange 10923 16383 >/dev/null
  for port in "${CLUSTER_PORTS[@]:1}"; do
    redis-cli -p "${CLUSTER_PORTS[0]}" cluster meet 127.0.0.1 "$port" >/dev/null
  done
  for _ in $(seq 150); do cluster_ok && return 0; sleep 0.1; done
  fail "the Redis Cluster did not reach cluster_state:ok; see $DIR/redis-*/redis.log"
}

env_lines() {
  echo "export MULTISESSION_REDIS_URL=redis://127.0.0.1:$REDIS_PORT"
  local urls=() port
  for port in "${CLUSTER_PORTS[@]}"; do urls+=("redis://127.0.0.1:$port"); done
  echo "export MULTISESSION_REDIS_CLUSTER_URLS=$(IFS=,; echo "${urls[*]}")"
}

case "${1:-}" in
  start)
    install redis-server redis-server
    install redis-tools redis-cli
    install openssl openssl          # certificates for the rediss:// test
    mkdir -p "$DIR"
    start_redis "$REDIS_PORT"
    start_cluster
    log "redis on $REDIS_PORT, redis cluster on ${CLUSTER_PORTS[*]}: up"
    ;;
  stop)
    command -v redis-cli >/dev/null || exit 0
    for port in "$REDIS_PORT" "${CLUSTER_PORTS[@]}"; do stop_redis "$port"; done
    ;;
  status)
    for port in "$REDIS_PORT" "${CLUSTER_PORTS[@]}"; do
      if redis_up "$port"; then echo "redis $port: up"; else echo "redis $port: down"; fi
    done
    if cluster_ok; then echo "redis cluster: ok"; else echo "redis cluster: not formed"; fi
    ;;
  env) env_lines ;;
  *) echo "usage: $0 start|stop|status|env" >&2; exit 2 ;;
esac
