#!/usr/bin/env bash
# A tessera cluster on loopback, from real components: PostgreSQL (Debian's package, a
# throwaway cluster, scripts/postgres.sh), N replicas of the default model sharing it,
# and nginx (deploy/nginx/tessera.conf) or SGLang's Model Gateway in front.
#
#   deploy/local/cluster.sh up N [--router] [-- FLAGS…]
#       Starts everything (FLAGS go to every replica's `tessera serve`), waits until each
#       part answers, and prints the front URL as the last line of stdout.
#   deploy/local/cluster.sh down
#       Stops everything it started, by pid (front, replicas, PostgreSQL).
#   deploy/local/cluster.sh stop I [--kill]      SIGTERM (drain: waits for the exit, up to
#                                                $TESSERA_CLUSTER_DRAIN_LIMIT s, default
#                                                120) or SIGKILL replica I.
#   deploy/local/cluster.sh start I [-- FLAGS…]  (Re)starts replica I on its port, with
#                                                the cluster's flags plus FLAGS.
#   deploy/local/cluster.sh status               What runs, with pids and URLs.
#   deploy/local/cluster.sh front PORT…          nginx alone, in front of replicas already
#                                                listening on these loopback ports (started
#                                                by hand, or a test's stand-ins); prints
#                                                its URL. `down` stops it.
#
# State (pidfiles, ports, logs, generated configs) lives in $TESSERA_CLUSTER_DIR (default
# /tmp/tessera-cluster). The binary is $TESSERA_BIN (default target/release/tessera), the
# replicas get `--replica-id replica-I`; TESSERA_* variables in the environment (e.g.
# TESSERA_API_KEY) reach them as usual. --router runs the gateway (`smg launch`, policy
# $TESSERA_ROUTER_POLICY, default cache_aware) from a venv of the pinned
# deploy/local/router-requirements.txt (PyPI) under $TESSERA_CACHE_DIR (default .cache).
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
state="${TESSERA_CLUSTER_DIR:-/tmp/tessera-cluster}"
bin="${TESSERA_BIN:-${CARGO_TARGET_DIR:-$root/target}/release/tessera}"
cache="${TESSERA_CACHE_DIR:-$root/.cache}"
# How long a replica may drain after SIGTERM before it is killed: tessera exits by itself
# within its --shutdown-timeout + 5 s, so keep this above that (the default 30 s + 5).
drain_limit="${TESSERA_CLUSTER_DRAIN_LIMIT:-120}"

die() {
  echo "deploy/local/cluster.sh: $*" >&2
  exit 1
}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# wait_until SECONDS WHAT COMMAND…: runs COMMAND until it succeeds, else dies naming WHAT.
wait_until() {
  local limit=$1 what=$2
  shift 2
  local deadline=$((SECONDS + limit))
  until "$@" >/dev/null; do
    [ $SECONDS -lt $deadline ] || die "$what did not come up within ${limit} s (logs in $state)"
    sleep 0.2
  done
}

alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

# stop_pid PIDFILE SIGNAL SECONDS: signals the process, waits for it, SIGKILL after SECONDS.
stop_pid() {
  local file=$1 sig=$2 limit=$3 pid
  alive "$file" || { rm -f "$file"; return 0; }
  pid=$(cat "$file")
  kill "-$sig" "$pid" 2>/dev/null || true
  local deadline=$((SECONDS + limit))
  while kill -0 "$pid" 2>/dev/null; do
    if [ $SECONDS -ge $deadline ]; then
      kill -KILL "$pid" 2>/dev/null || true
    fi
    sleep 0.1
  done
  rm -f "$file"
}

ready() { curl -fsS --max-time 2 "http://127.0.0.1:$1/ready" 2>/dev/null; }

start_postgres() {
  local port bindir
  bindir=$(bash "$root/scripts/postgres.sh" install)
  port=$(free_port)
  echo "$port" >"$state/postgres.port"
  setsid bash "$root/scripts/postgres.sh" run "$state/pg" "$port" \
    >"$state/postgres.log" 2>&1 </dev/null &
  echo $! >"$state/postgres.pid"
  wait_until 120 PostgreSQL pg_ready "$bindir" "$port"
  echo "postgres://tessera@127.0.0.1:$port/postgres" >"$state/database.url"
}

pg_ready() {
  alive "$state/postgres.pid" || die "PostgreSQL stopped: $(tail -5 "$state/postgres.log")"
  "$1/pg_isready" -q -h 127.0.0.1 -p "$2" -U tessera -d postgres
}

start_replica() {
  local i=$1
  shift
  [ -f "$state/replica-$i.port" ] || die "no replica $i in this cluster"
  alive "$state/replica-$i.pid" && die "replica $i is running (pid $(cat "$state/replica-$i.pid"))"
  local port flags=()
  port=$(cat "$state/replica-$i.port")
  [ -s "$state/replica.flags" ] && mapfile -t flags <"$state/replica.flags"
  mapfile -t flags < <(without_flags_of "$*" "${flags[@]}")
  setsid "$bin" serve --host 127.0.0.1 --port "$port" --replica-id "replica-$i" \
    --database-url "$(cat "$state/database.url")" "${flags[@]}" "$@" \
    >>"$state/replica-$i.log" 2>&1 </dev/null &
  echo $! >"$state/replica-$i.pid"
  wait_until 300 "replica $i" replica_ready "$i" "$port"
}

# without_flags_of "EXTRA FLAGS" FLAG…: prints the FLAGs (one a line) less those that
# EXTRA FLAGS set again (`--name value` or `--name=value`), so a replica's own flags
# replace the cluster's.
without_flags_of() {
  local extra=" $1 " skip=0 arg name
  shift
  for arg in "$@"; do
    if [ "$skip" = 1 ]; then
      skip=0
      [[ "$arg" == --* ]] || continue
    fi
    if [[ "$arg" == --* ]]; then
      name=${arg%%=*}
      if [[ "$extra" == *" $name "* || "$extra" == *" $name="* ]]; then
        [[ "$arg" == *=* ]] || skip=1
        continue
      fi
    fi
    echo "$arg"
  done
}

replica_ready() {
  alive "$state/replica-$1.pid" || die "replica $1 stopped: $(tail -5 "$state/replica-$1.log")"
  ready "$2"
}

write_nginx_conf() {
  local port=$1 n=$2 i replica_port
  cp "$root/deploy/nginx/tessera-proxy.conf" "$state/nginx/"
  : >"$state/nginx/tessera-replicas.conf"
  : >"$state/nginx/tessera-replicas-unchecked.conf"
  for ((i = 0; i < n; i++)); do
    replica_port=$(cat "$state/replica-$i.port")
    echo "server 127.0.0.1:$replica_port max_fails=1 fail_timeout=1s;" \
      >>"$state/nginx/tessera-replicas.conf"
    echo "server 127.0.0.1:$replica_port max_fails=0;" \
      >>"$state/nginx/tessera-replicas-unchecked.conf"
  done
  echo "listen 127.0.0.1:$port;" >"$state/nginx/tessera-listen.conf"
  cat >"$state/nginx/nginx.conf" <<CONF
daemon off;
worker_processes 1;
pid $state/nginx/nginx.pid;
error_log $state/nginx/error.log warn;
pcre_jit on;
events { worker_connections 1024; }
http {
    client_body_temp_path $state/nginx/tmp/body;
    proxy_temp_path $state/nginx/tmp/proxy;
    fastcgi_temp_path $state/nginx/tmp/fastcgi;
    uwsgi_temp_path $state/nginx/tmp/uwsgi;
    scgi_temp_path $state/nginx/tmp/scgi;
    include $root/deploy/nginx/tessera.conf;
}
CONF
}

start_nginx() {
  local n=$1 port nginx
  nginx=$(bash "$root/scripts/nginx.sh" install)
  port=$(free_port)
  mkdir -p "$state/nginx/tmp"
  write_nginx_conf "$port" "$n"
  "$nginx" -t -q -c "$state/nginx/nginx.conf" -p "$state/nginx" 2>"$state/nginx/test.log" ||
    die "nginx refused its configuration: $(cat "$state/nginx/test.log")"
  setsid "$nginx" -c "$state/nginx/nginx.conf" -p "$state/nginx" \
    >"$state/front.log" 2>&1 </dev/null &
  echo $! >"$state/front.pid"
  echo "http://127.0.0.1:$port" >"$state/front.url"
  wait_until 30 nginx front_ready "$port"
}

router_venv() {
  local venv="$cache/router-venv" req="$root/deploy/local/router-requirements.txt"
  if ! cmp -s "$req" "$venv/.requirements"; then
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$req" >&2 ||
      die "installing the router from PyPI failed (see above)"
    cp "$req" "$venv/.requirements"
  fi
  echo "$venv"
}

start_router() {
  local n=$1 venv port metrics i urls=() key=()
  venv=$(router_venv)
  port=$(free_port)
  metrics=$(free_port)
  for ((i = 0; i < n; i++)); do urls+=("http://127.0.0.1:$(cat "$state/replica-$i.port")"); done
  [ -n "${TESSERA_API_KEY:-}" ] && key=(--api-key "${TESSERA_API_KEY%%,*}")
  setsid "$venv/bin/smg" launch --host 127.0.0.1 --port "$port" --worker-urls "${urls[@]}" \
    --policy "${TESSERA_ROUTER_POLICY:-cache_aware}" --prometheus-host 127.0.0.1 \
    --prometheus-port "$metrics" --health-check-endpoint /ready \
    --health-check-interval-secs 2 --health-failure-threshold 1 "${key[@]}" \
    >"$state/front.log" 2>&1 </dev/null &
  echo $! >"$state/front.pid"
  echo "http://127.0.0.1:$port" >"$state/front.url"
  wait_until 120 "the router" router_ready "$port" "$n"
}

front_ready() {
  alive "$state/front.pid" || die "the front stopped: $(tail -5 "$state/front.log")"
  curl -fsS --max-time 2 "http://127.0.0.1:$1/ready" 2>/dev/null
}

# The gateway registers workers in the background: ready once all N are healthy. With
# --api-key it asks its own clients for that key too (/workers included).
router_ready() {
  local auth=()
  alive "$state/front.pid" || die "the router stopped: $(tail -5 "$state/front.log")"
  [ -n "${TESSERA_API_KEY:-}" ] && auth=(-H "Authorization: Bearer ${TESSERA_API_KEY%%,*}")
  [ "$(curl -fsS --max-time 2 "${auth[@]}" "http://127.0.0.1:$1/workers" |
    grep -o '"is_healthy":true' | wc -l)" -ge "$2" ] 2>/dev/null
}

up() {
  [ $# -ge 1 ] || die "usage: up N [--router] [-- FLAGS…]"
  local n=$1 front=nginx i
  shift
  [[ "$n" =~ ^[1-9][0-9]*$ ]] || die "N must be a positive number of replicas. Given: $n"
  if [ "${1:-}" = "--router" ]; then front=router; shift; fi
  [ "${1:-}" = "--" ] && shift
  [ -x "$bin" ] || die "no tessera binary at $bin (cargo build --release, or set TESSERA_BIN)"
  [ -e "$state/postgres.pid" ] && die "a cluster already runs from $state (run down first)"
  mkdir -p "$state"
  # PostgreSQL runs as the `postgres` user when this runs as root: it must reach the dir.
  chmod 755 "$state"
  printf '%s\n' "$@" >"$state/replica.flags"
  echo "$front" >"$state/front.kind"
  start_postgres
  for ((i = 0; i < n; i++)); do free_port >"$state/replica-$i.port"; done
  for ((i = 0; i < n; i++)); do start_replica "$i"; done
  if [ "$front" = router ]; then start_router "$n"; else start_nginx "$n"; fi
  cat "$state/front.url"
}

# front PORT…: nginx in front of replicas this script did not start.
front() {
  [ $# -ge 1 ] || die "usage: front PORT…"
  local i=0 port
  [ -e "$state/front.pid" ] && die "a front already runs from $state (run down first)"
  mkdir -p "$state"
  echo nginx >"$state/front.kind"
  for port in "$@"; do
    [[ "$port" =~ ^[1-9][0-9]*$ ]] || die "PORT must be a port number. Given: $port"
    echo "$port" >"$state/replica-$i.port"
    i=$((i + 1))
  done
  start_nginx "$#"
  cat "$state/front.url"
}

down() {
  local file
  [ -d "$state" ] || return 0
  stop_pid "$state/front.pid" TERM 10
  for file in "$state"/replica-*.pid; do
    [ -e "$file" ] && stop_pid "$file" TERM "$drain_limit"
  done
  stop_pid "$state/postgres.pid" INT 30
  rm -rf "$state"
}

status() {
  local file name
  for file in "$state"/*.pid; do
    [ -e "$file" ] || continue
    name=$(basename "$file" .pid)
    if alive "$file"; then echo "$name: running, pid $(cat "$file")"; else echo "$name: stopped"; fi
  done
  [ -f "$state/front.url" ] && echo "front: $(cat "$state/front.url")"
  return 0
}

cmd=${1:-}
[ $# -gt 0 ] && shift
case "$cmd" in
  up) up "$@" ;;
  front) front "$@" ;;
  down) down ;;
  status) status ;;
  stop)
    [ $# -ge 1 ] || die "usage: stop I [--kill]"
    if [ "${2:-}" = "--kill" ]; then stop_pid "$state/replica-$1.pid" KILL 5; else stop_pid "$state/replica-$1.pid" TERM "$drain_limit"; fi
    ;;
  start)
    [ $# -ge 1 ] || die "usage: start I [-- FLAGS…]"
    i=$1
    shift
    [ "${1:-}" = "--" ] && shift
    start_replica "$i" "$@"
    ;;
  *) die "usage: up N [--router] [-- FLAGS…] | front PORT… | down | stop I [--kill] | start I [-- FLAGS…] | status" ;;
esac
