# Sourced by scripts that need the llama-cpp-python sdist (it vendors llama.cpp and its
# tokenizer test vectors). Defines LLAMA_SDIST_VERSION and fetch_llama_sdist.

LLAMA_SDIST_VERSION="0.3.36"
LLAMA_SDIST_SHA256="832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"

# fetch_llama_sdist CACHE_DIR: makes sure CACHE_DIR/dl holds the sha256-checked sdist
# (downloads it only when missing or corrupt) and prints its path. pip fetches it from the
# index it is configured with (`pip download --no-binary`: the source archive, never a
# wheel), so no host name is written here.
fetch_llama_sdist() {
  local cache="$1"
  local sdist="$cache/dl/llama_cpp_python-$LLAMA_SDIST_VERSION.tar.gz"
  mkdir -p "$cache/dl"
  if [ ! -f "$sdist" ] || [ "$(sha256sum "$sdist" | cut -d' ' -f1)" != "$LLAMA_SDIST_SHA256" ]; then
    echo "fetching the llama-cpp-python==$LLAMA_SDIST_VERSION sdist with pip ..." >&2
    local tmp
    tmp=$(mktemp -d "$cache/dl/llama-sdist.XXXXXX")
    if ! python3 -m pip download --quiet --disable-pip-version-check --no-deps \
      --no-binary llama-cpp-python -d "$tmp" "llama-cpp-python==$LLAMA_SDIST_VERSION" >&2; then
      rm -rf "$tmp"
      echo "error: pip could not download the llama-cpp-python $LLAMA_SDIST_VERSION sdist" >&2
      return 1
    fi
    local got="$tmp/llama_cpp_python-$LLAMA_SDIST_VERSION.tar.gz"
    if [ ! -f "$got" ] || [ "$(sha256sum "$got" | cut -d' ' -f1)" != "$LLAMA_SDIST_SHA256" ]; then
      echo "error: llama-cpp-python $LLAMA_SDIST_VERSION sdist does not match sha256 $LLAMA_SDIST_SHA256" >&2
      rm -rf "$tmp"
      return 1
    fi
    mv "$got" "$sdist"
    rm -rf "$tmp"
  fi
  echo "$sdist"
}
