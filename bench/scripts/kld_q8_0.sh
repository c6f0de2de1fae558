#!/usr/bin/env bash
# Quality of `--quantization q8_0` (issue 17): perplexity and KL divergence of the default
# model served as q8_0 against the same model in F16, on a real text from Debian's
# `fortunes` package (the `science` collection: quotations in English prose), with
# `tessera perplexity` (--kl-divergence-base / --kl-divergence), and the cross-check
# that llama-perplexity reads our saved rows: its KL divergence of llama-quantize's Q8_0
# file against them.
#
# F16 = the default Q4_1 model dequantized by llama-quantize (its values are the Q4_1
# grid: real weights); Q8_0 = llama-quantize's Q8_0 of that F16 file (byte-identical to
# our quantization at load, tests/quantize_load.rs). Report only; prints the figures.
# Env: CTX (512), CHUNKS (8), TESSERA (target/release/tessera), TESSERA_CACHE_DIR.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cache="${TESSERA_CACHE_DIR:-$root/.cache}"
ctx="${CTX:-512}"
chunks="${CHUNKS:-8}"
tessera="${TESSERA:-$root/target/release/tessera}"
work="$cache/kld"
mkdir -p "$work"

# The text: Debian's `fortunes`, unpacked (not installed) into the cache.
text="$work/fortunes-science.txt"
if [ ! -s "$text" ]; then
  (cd "$work" && apt-get download fortunes >/dev/null)
  dpkg -x "$work"/fortunes_*.deb "$work/fortunes"
  cp "$work/fortunes/usr/share/games/fortunes/science" "$text"
fi

mapfile -t bins < <("$root/scripts/build-llama-cpp.sh")
quantize=$(printf '%s\n' "${bins[@]}" | grep '/llama-quantize$')
perplexity=$(printf '%s\n' "${bins[@]}" | grep '/llama-perplexity$')
q41="$cache/models/SmolLM2-135M-Instruct.Q4_1.gguf"
f16="$work/SmolLM2-135M-Instruct.F16.gguf"
q80="$work/SmolLM2-135M-Instruct.Q8_0.gguf"
[ -s "$f16" ] || "$quantize" --allow-requantize "$q41" "$f16" F16 >/dev/null 2>&1
[ -s "$q80" ] || "$quantize" "$f16" "$q80" Q8_0 >/dev/null 2>&1

engine=(--max-model-len 2048 --kv-cache-memory 256MiB)
base="$work/f16-ctx$ctx.kld"
echo "== F16: perplexity, rows saved to $base"
"$tessera" perplexity --model "$f16" "${engine[@]}" --file "$text" --ctx "$ctx" \
  --chunks "$chunks" --kl-divergence-base "$base" 2>/dev/null | tail -1
echo "== F16 with --quantization q8_0 against the F16 rows (tessera)"
"$tessera" perplexity --model "$f16" --quantization q8_0 "${engine[@]}" \
  --kl-divergence-base "$base" --kl-divergence 2>/dev/null | sed -n '/======/,$p'
echo "== llama-quantize's Q8_0 against the same rows (llama-perplexity)"
"$perplexity" -m "$q80" -c "$ctx" -b "$ctx" -t 2 --no-repack -fa off \
  --kl-divergence-base "$base" --kl-divergence 2>&1 |
  grep -E 'Mean PPL|Mean ln|Mean +KLD|Median +KLD|Maximum KLD|Same top p|RMS Δp'
