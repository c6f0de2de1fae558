#!/usr/bin/env bash
# nginx for the cluster tests (tests/python/test_cluster.py through deploy/local/cluster.sh).
#
#   scripts/nginx.sh install
#       Makes sure Debian's `nginx` package is installed (apt-get, as root or through
#       passwordless sudo) and prints the binary's path. Fails with a clear message when
#       it cannot be installed; never pretends. The package's own service is not used:
#       deploy/local/cluster.sh runs nginx in the foreground with its own configuration.
set -euo pipefail
# shellcheck source=lib/debian-package.sh
. "$(dirname "$0")/lib/debian-package.sh"

die() {
  echo "scripts/nginx.sh: $*" >&2
  exit 1
}

case "${1:-}" in
  install) package_binary nginx nginx ;;
  *) die "usage: scripts/nginx.sh install" ;;
esac
