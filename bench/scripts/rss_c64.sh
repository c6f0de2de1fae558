#!/usr/bin/env bash
# Usage: bench/scripts/rss_c64.sh DTYPE (auto or q8_0): serve the default model with --kv-cache-dtype DTYPE, 512MiB KV, run one c=64 sweep (64 requests, 128-token prompts, 128 tokens out), print VmHWM/VmRSS before and after and the "KV cache sized" log line. For bench/NOTES.md section 17.
set -u
dtype=$1
dir=$(mktemp -d /tmp/tessera-rss64.XXXX)
target/release/tessera serve --kv-cache-dtype $dtype --kv-cache-memory 512MiB --max-num-seqs 64 --port 18732 --data-dir "$dir" --disable-audit-log > "$dir/log" 2>&1 &
pid=$!
target/release/tessera-bench wait --url http://127.0.0.1:18732 >/dev/null 2>&1 || for i in $(seq 1 300); do curl -sf localhost:18732/ready >/dev/null 2>&1 && break; sleep 0.2; done
grep -E "VmHWM|VmRSS" /proc/$pid/status | tr -s ' \t' ' ' | tr '\n' ';'; echo " (after load)"
target/release/tessera-bench sweep --url http://127.0.0.1:18732 --label tessera-$dtype --concurrency 64 --rounds 1 --min-requests 64 --server-pid $pid --out /tmp/rss64-$dtype.json
grep -E "VmHWM|VmRSS|RssAnon|RssFile" /proc/$pid/status | tr -s ' \t' ' ' | tr '\n' ';'; echo " (after c=64)"
grep -E "KV cache sized" "$dir/log" | sed 's/\x1b\[[0-9;]*m//g' | cut -c1-220
kill $pid; wait $pid 2>/dev/null; rm -rf "$dir"
