#!/usr/bin/env bash
# Prometheus for the dashboard test (tests/prometheus_dashboard.rs).
#
#   scripts/prometheus.sh install
#       Makes sure Debian's `prometheus` package is installed (apt-get, as root or through
#       passwordless sudo) and prints the binary's path. Fails with a clear message when
#       it cannot be installed; never pretends.
#   scripts/prometheus.sh run TARGET LISTEN DIR
#       Installs if needed, writes DIR/prometheus.yml scraping http://TARGET/metrics every
#       second, and runs Prometheus in the foreground on LISTEN (e.g. 127.0.0.1:9091) with
#       its data in DIR/data.
set -euo pipefail
# shellcheck source=lib/debian-package.sh
. "$(dirname "$0")/lib/debian-package.sh"

die() {
  echo "scripts/prometheus.sh: $*" >&2
  exit 1
}

install_prometheus() {
  package_binary prometheus prometheus
}

run_prometheus() {
  [ $# -eq 3 ] || die "usage: scripts/prometheus.sh run TARGET LISTEN DIR"
  local target=$1 listen=$2 dir=$3 bin
  bin=$(install_prometheus)
  mkdir -p "$dir/data"
  cat >"$dir/prometheus.yml" <<YAML
global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: tessera
    static_configs:
      - targets: ['$target']
YAML
  exec "$bin" \
    --config.file="$dir/prometheus.yml" \
    --storage.tsdb.path="$dir/data" \
    --web.listen-address="$listen" \
    --log.level=warn
}

case "${1:-}" in
  install) install_prometheus ;;
  run) shift; run_prometheus "$@" ;;
  *) die "usage: scripts/prometheus.sh install | run TARGET LISTEN DIR" ;;
esac
