#!/usr/bin/env bash
# Fetch llama.cpp's tokenizer test vectors (models/ggml-vocab-*.gguf with .inp/.out) from
# the llama-cpp-python==0.3.36 sdist on PyPI (sha256-checked) into the git-ignored cache.
# Prints the vocab folder. A second run downloads nothing.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=lib/llama-sdist.sh
. "$root/scripts/lib/llama-sdist.sh"
cache="${TESSERA_CACHE_DIR:-$root/.cache}"
vocab="$cache/vocab"

if [ -f "$vocab/.complete" ]; then
  echo "$vocab"
  exit 0
fi
mkdir -p "$vocab"
sdist=$(fetch_llama_sdist "$cache")
tar -xzf "$sdist" -C "$vocab" --strip-components=4 --wildcards \
  "llama_cpp_python-$LLAMA_SDIST_VERSION/vendor/llama.cpp/models/ggml-vocab-*"
touch "$vocab/.complete"
echo "$vocab"
