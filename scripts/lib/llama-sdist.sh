# Sourced by scripts that need the llama-cpp-python sdist (it vendors llama.cpp and its
# tokenizer test vectors). Defines LLAMA_SDIST_VERSION and fetch_llama_sdist.

LLAMA_SDIST_VERSION="0.3.36"
LLAMA_SDIST_SHA256="832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"

# fetch_llama_sdist CACHE_DIR: makes sure CACHE_DIR/dl holds the sha256-checked sdist from
# PyPI (downloads it only when missing or corrupt) and prints its path.
fetch_llama_sdist() {
  local cache="$1"
  local sdist="$cache/dl/llama_cpp_python-$LLAMA_SDIST_VERSION.tar.gz"
  mkdir -p "$cache/dl"
  if [ ! -f "$sdist" ] || [ "$(sha256sum "$sdist" | cut -d' ' -f1)" != "$LLAMA_SDIST_SHA256" ]; then
    echo "fetching llama-cpp-python==$LLAMA_SDIST_VERSION sdist from PyPI ..." >&2
    local url
    url=$(curl -fsSL "https://pypi.org/simple/llama-cpp-python/" |
      grep -o "https://[^\"#]*llama_cpp_python-$LLAMA_SDIST_VERSION.tar.gz" | head -n 1)
    curl -fsSL -o "$sdist.part" "$url"
    if [ "$(sha256sum "$sdist.part" | cut -d' ' -f1)" != "$LLAMA_SDIST_SHA256" ]; then
      echo "error: llama-cpp-python $LLAMA_SDIST_VERSION sdist does not match sha256 $LLAMA_SDIST_SHA256" >&2
      rm -f "$sdist.part"
      return 1
    fi
    mv "$sdist.part" "$sdist"
  fi
  echo "$sdist"
}
