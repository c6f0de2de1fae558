#!/usr/bin/env python3
"""Closed-loop throughput of a running llama-server (stdlib only), the same workload as
`tessera bench`: N concurrent greedy requests, `--prompt-len` prompt tokens (token ids,
distinct first token per stream so no prompt cache sharing), exactly `--max-tokens`
outputs (ignore_eos). Prints one line per concurrency level in `tessera bench`'s format.

    bench/llama_server_client.py --url http://127.0.0.1:8088 --concurrency 1,32
"""
import argparse
import json
import threading
import time
import urllib.request


def tokenize(url: str, text: str) -> list[int]:
    req = urllib.request.Request(url + "/tokenize", data=json.dumps({"content": text}).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req) as r:
        return json.load(r)["tokens"]


def one_stream(url: str, prompt: list[int], max_tokens: int, out: list, i: int) -> None:
    body = {"prompt": prompt, "n_predict": max_tokens, "ignore_eos": True, "stream": True,
            "temperature": 0.0, "cache_prompt": False}
    req = urllib.request.Request(url + "/completion", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    t0 = time.perf_counter()
    first, n = None, 0
    with urllib.request.urlopen(req) as r:
        for raw in r:
            line = raw.decode().strip()
            if not line.startswith("data: "):
                continue
            ev = json.loads(line[6:])
            if ev.get("stop"):
                n = ev.get("tokens_predicted", n)
                break
            n += 1
            if first is None:
                first = time.perf_counter() - t0
    total = time.perf_counter() - t0
    first = first if first is not None else total
    out[i] = (n, first, (n - 1) / max(total - first, 1e-9))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", default="http://127.0.0.1:8088")
    ap.add_argument("--concurrency", default="1,32")
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--max-tokens", type=int, default=128)
    a = ap.parse_args()
    text = "The quick brown fox jumps over the lazy dog while the cat watches. " * a.prompt_len
    base = tokenize(a.url, text)
    for c in [int(x) for x in a.concurrency.split(",")]:
        prompts = [[base[i % len(base)]] + base[: a.prompt_len - 1] for i in range(c)]
        out = [None] * c
        t0 = time.perf_counter()
        threads = [threading.Thread(target=one_stream, args=(a.url, p, a.max_tokens, out, i))
                   for i, p in enumerate(prompts)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        secs = time.perf_counter() - t0
        toks = sum(o[0] for o in out)
        print(f"concurrency {c:>3}: {toks:>6} tokens in {secs:>6.2f}s = {toks / secs:>7.1f} output tok/s"
              f" | ttft {sum(o[1] for o in out) / c * 1e3:>7.1f} ms"
              f" | per-stream decode {sum(o[2] for o in out) / c:>6.1f} tok/s")


if __name__ == "__main__":
    main()
