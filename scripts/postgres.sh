#!/usr/bin/env bash
# PostgreSQL for the dialog store tests (tests/store_backends.rs, tests/dialog_http.rs) and
# the conversation bench: Debian's `postgresql` package and a throwaway cluster.
#
#   scripts/postgres.sh install
#       Makes sure Debian's `postgresql` package is installed (apt-get, as root or through
#       passwordless sudo) and prints the directory of its server binaries. Fails with a
#       clear message when it cannot be installed; never pretends.
#   scripts/postgres.sh run DIR PORT
#       Installs if needed, creates a new cluster in DIR/data (superuser `tessera`, trust
#       authentication, loopback only) and runs the server in the foreground on
#       127.0.0.1:PORT (its socket in DIR). As root the server runs as the `postgres`
#       system user (PostgreSQL refuses root), through setpriv, so this script's process
#       IS the server: stop it by pid (SIGINT: fast shutdown). The database URL is
#       postgres://tessera@127.0.0.1:PORT/postgres
set -euo pipefail
# shellcheck source=lib/debian-package.sh
. "$(dirname "$0")/lib/debian-package.sh"

die() {
  echo "scripts/postgres.sh: $*" >&2
  exit 1
}

find_bindir() {
  local dir
  for dir in /usr/lib/postgresql/*/bin; do
    [ -x "$dir/postgres" ] && [ -x "$dir/initdb" ] && echo "$dir"
  done | sort -V | tail -n 1 | grep .
}

install_postgres() {
  local dir
  if dir=$(find_bindir); then
    echo "$dir"
    return 0
  fi
  apt_install_package postgresql
  dir=$(find_bindir) || die "the postgresql package is installed but no server binaries were found under /usr/lib/postgresql"
  echo "$dir"
}

run_postgres() {
  [ $# -eq 2 ] || die "usage: scripts/postgres.sh run DIR PORT"
  local dir=$1 port=$2 bindir
  bindir=$(install_postgres)
  mkdir -p "$dir"
  local -a as_server=()
  if [ "$(id -u)" -eq 0 ]; then
    id postgres >/dev/null 2>&1 || die "running as root needs the \`postgres\` system user (the postgresql package creates it)"
    chown postgres: "$dir"
    as_server=(setpriv --reuid=postgres --regid=postgres --init-groups --)
  fi
  "${as_server[@]}" "$bindir/initdb" --pgdata="$dir/data" --username=tessera --auth=trust \
    --encoding=UTF8 --locale=C.UTF-8 --no-sync >"$dir/initdb.log" 2>&1 ||
    die "initdb failed: $(cat "$dir/initdb.log")"
  exec "${as_server[@]}" "$bindir/postgres" -D "$dir/data" -h 127.0.0.1 -p "$port" \
    -k "$dir" -c fsync=on -c max_connections=200 -c log_min_messages=warning
}

case "${1:-}" in
  install) install_postgres ;;
  run) shift; run_postgres "$@" ;;
  *) die "usage: scripts/postgres.sh install | run DIR PORT" ;;
esac
