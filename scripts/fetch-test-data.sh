#!/usr/bin/env bash
# Fetch llama.cpp's tokenizer test vectors (models/ggml-vocab-*.gguf with .inp/.out) from
# the llama-cpp-python==0.3.36 sdist on PyPI (sha256-checked) into the git-ignored cache.
# Prints the vocab folder. A second run downloads nothing.
set -euo pipefail

VERSION="0.3.36"
SHA256="832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"

root=$(cd "$(dirname "$0")/.." && pwd)
cache="${TESSERA_CACHE_DIR:-$root/.cache}"
vocab="$cache/vocab"
sdist="$cache/dl/llama_cpp_python-$VERSION.tar.gz"

if [ -f "$vocab/.complete" ]; then
  echo "$vocab"
  exit 0
fi
mkdir -p "$cache/dl" "$vocab"
if [ ! -f "$sdist" ] || [ "$(sha256sum "$sdist" | cut -d' ' -f1)" != "$SHA256" ]; then
  echo "fetching llama-cpp-python==$VERSION sdist from PyPI ..." >&2
  url=$(curl -fsSL "https://pypi.org/simple/llama-cpp-python/" |
    grep -o "https://[^\"#]*llama_cpp_python-$VERSION.tar.gz" | head -n 1)
  curl -fsSL -o "$sdist.part" "$url"
  if [ "$(sha256sum "$sdist.part" | cut -d' ' -f1)" != "$SHA256" ]; then
    echo "error: llama-cpp-python $VERSION sdist does not match sha256 $SHA256" >&2
    rm -f "$sdist.part"
    exit 1
  fi
  mv "$sdist.part" "$sdist"
fi
tar -xzf "$sdist" -C "$vocab" --strip-components=4 --wildcards \
  "llama_cpp_python-$VERSION/vendor/llama.cpp/models/ggml-vocab-*"
touch "$vocab/.complete"
echo "$vocab"
