#!/usr/bin/env bash
# GPU check for the CUDA MoE routing kernels (kernels/moe_*.cu): builds tessera with
# feature `cuda` and runs exactly the kernel-vs-CPU-twin tests (tests/moe_cuda.rs), then
# the timing of each kernel against its CPU twin. Fails if the tests were skipped (no GPU
# found) or any kernel disagrees with its twin.
#
# Needs: an NVIDIA GPU (compute capability >= 7.0) with its driver (libcuda), and NVRTC
# (libnvrtc.so.12, CUDA 12.x) on the loader path. No CUDA toolkit is needed to build.
# If libnvrtc is not installed system-wide, point NVRTC_LIB_DIR at a folder holding it
# (e.g. the `nvidia/cuda_nvrtc/lib` folder of the PyPI package nvidia-cuda-nvrtc-cu12).
# Env: CARGO_TARGET_DIR as usual; TESSERA_MOE_SEED to replay a failing seed.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -n "${NVRTC_LIB_DIR:-}" ]; then
  export LD_LIBRARY_PATH="$NVRTC_LIB_DIR${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,compute_cap,driver_version --format=csv,noheader || true

cargo build --release --features cuda --test moe_cuda
log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo test --release --features cuda --test moe_cuda -- --nocapture --test-threads=1 2>&1 | tee "$log"
if grep -q '^skipped:' "$log"; then
  echo "gpu-check: FAILED: the kernel tests were skipped (see the 'skipped:' line above)" >&2
  exit 1
fi
cargo test --release --features cuda --test moe_cuda kernel_timings_vs_cpu -- --ignored --nocapture
echo "gpu-check: OK"
