#!/usr/bin/env bash
# Usage: bench/scripts/rss_after_load.sh MODEL [serve flags]: starts `tessera serve` (64MiB KV,
# --max-model-len 2048), waits for /ready, prints VmHWM/VmRSS/RssAnon/RssFile and the load log
# lines, stops it. For the --quantization figures in bench/NOTES.md (section 15).
set -u
model=$1; shift
dir=$(mktemp -d /tmp/tessera-rss.XXXX)
target/release/tessera serve --model "$model" "$@" --port 18731 --kv-cache-memory 64MiB --max-model-len 2048 --data-dir "$dir" --disable-audit-log > "$dir/log" 2>&1 &
pid=$!
for i in $(seq 1 600); do
  curl -sf localhost:18731/ready >/dev/null 2>&1 && break; kill -0 $pid 2>/dev/null || break
  sleep 0.2
done
grep -E "VmRSS|RssAnon|RssFile|VmHWM" /proc/$pid/status | tr -s ' \t' ' ' | tr '\n' ';'; echo
grep -E "loaded|quantiz|loading" "$dir/log" | sed 's/\x1b\[[0-9;]*m//g' | cut -c1-220
kill $pid; wait $pid 2>/dev/null; rm -rf "$dir"
