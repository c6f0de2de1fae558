#!/usr/bin/env bash
# Build llama.cpp's `llama-quantize`, `llama-server` and `llama-perplexity` (Release, CPU
# only, no curl) from the llama.cpp vendored in the llama-cpp-python==0.3.36 sdist from PyPI
# (sha256-checked), into the git-ignored cache. These are reference tools for
# scripts/make_fixtures.py (K-quants, the Q8_0 oracle of --quantization), for
# `tessera perplexity`'s reference number and for side-by-side checks; the Rust build never
# needs them. Prints the binaries' paths. A second run builds nothing.
# Env: TESSERA_CACHE_DIR (default <repo>/.cache), BUILD_JOBS (default 2),
#      LLAMA_CPU_FEATURES: native (default: ggml's GGML_NATIVE, this CPU's best) or avx2
#      (GGML_NATIVE=OFF with AVX2, FMA, F16C and BMI2 on and AVX-512/AMX off, as llama.cpp
#      builds for an AVX2-only host; into its own build folder, suffix -avx2).
set -euo pipefail

TARGETS=(llama-quantize llama-server llama-perplexity)

root=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=lib/llama-sdist.sh
. "$root/scripts/lib/llama-sdist.sh"
VERSION="$LLAMA_SDIST_VERSION"
cache="${TESSERA_CACHE_DIR:-$root/.cache}"
src_root="$cache/dl/llama_cpp_python-$VERSION"
llama_src="$src_root/vendor/llama.cpp"
build="$cache/build/llama.cpp-$VERSION"
cpu_flags=()
case "${LLAMA_CPU_FEATURES:-native}" in
  native) ;;
  avx2)
    build="$build-avx2"
    cpu_flags=(-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON
               -DGGML_BMI2=ON -DGGML_AVX_VNNI=OFF -DGGML_AVX512=OFF -DGGML_AVX512_VBMI=OFF
               -DGGML_AVX512_VNNI=OFF -DGGML_AVX512_BF16=OFF -DGGML_AMX_TILE=OFF
               -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF) ;;
  *) echo "LLAMA_CPU_FEATURES is native or avx2 (got '$LLAMA_CPU_FEATURES')" >&2; exit 2 ;;
esac
jobs="${BUILD_JOBS:-2}"

print_bins() {
  for t in "${TARGETS[@]}"; do echo "$build/bin/$t"; done
}

all_built=1
for t in "${TARGETS[@]}"; do [ -x "$build/bin/$t" ] || all_built=0; done
if [ "$all_built" = 1 ]; then
  print_bins
  exit 0
fi

# 1. The sdist, unpacked whole.
if [ ! -f "$llama_src/CMakeLists.txt" ]; then
  sdist=$(fetch_llama_sdist "$cache")
  tar -xzf "$sdist" -C "$cache/dl"
fi

# 2. cmake + ninja: from PATH, else pip-installed into a tools venv in the cache.
if ! command -v cmake >/dev/null || ! command -v ninja >/dev/null; then
  tools="$cache/tools-venv"
  if [ ! -x "$tools/bin/cmake" ] || [ ! -x "$tools/bin/ninja" ]; then
    echo "installing cmake and ninja into $tools ..." >&2
    python3 -m venv "$tools"
    "$tools/bin/pip" install --quiet cmake ninja
  fi
  export PATH="$tools/bin:$PATH"
fi

# 3. Configure and build only the two targets.
echo "building ${TARGETS[*]} in $build (-j$jobs) ..." >&2
cmake -S "$llama_src" -B "$build" -G Ninja \
  -DCMAKE_BUILD_TYPE=Release \
  -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF \
  -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF \
  -DGGML_CUDA=OFF -DGGML_METAL=OFF -DGGML_VULKAN=OFF -DGGML_OPENMP=ON \
  -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_APP=OFF \
  -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_SERVER=ON \
  -DBUILD_SHARED_LIBS=OFF "${cpu_flags[@]}" >&2
cmake --build "$build" --config Release -j "$jobs" --target "${TARGETS[@]}" >&2

for t in "${TARGETS[@]}"; do
  if [ ! -x "$build/bin/$t" ]; then
    echo "error: build finished but $build/bin/$t is missing" >&2
    exit 1
  fi
done
print_bins
