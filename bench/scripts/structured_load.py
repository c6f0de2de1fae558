"""Throughput of constrained against free decoding: S concurrent chat streams, all
constrained (`--mode json`: a JSON schema; `--mode regex`: a regex that never completes,
so every stream runs its full budget) or all free, alternating runs; prints completion
tokens per second of each run. Needs a running `tessera serve` and the `openai` package.

    python bench/scripts/structured_load.py --url http://127.0.0.1:8000/v1 --model smol \
        --streams 32 --runs 3 --mode regex
"""

import argparse
import asyncio
import time

from openai import AsyncOpenAI

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 16},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "city": {"type": "string", "maxLength": 24},
        "hobbies": {"type": "array", "items": {"type": "string", "maxLength": 16}, "minItems": 1, "maxItems": 4},
    },
    "required": ["name", "age", "city", "hobbies"],
    "additionalProperties": False,
}


async def one(client, model, i, constrained, mode, max_tokens):
    extra = {"min_tokens": max_tokens} if mode == "regex" else {}
    if constrained:
        if mode == "regex":
            extra["guided_regex"] = "[a-z ,.]+"
        else:
            extra["response_format"] = {"type": "json_schema", "json_schema": {"name": "p", "schema": SCHEMA}}
    done = await client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": f"Describe person number {i} in detail."}],
        temperature=1.0, seed=i, max_tokens=max_tokens, extra_body=extra,
    )
    return done.usage.completion_tokens


async def run(args, constrained):
    client = AsyncOpenAI(base_url=args.url, api_key=args.api_key, max_retries=0, timeout=600)
    started = time.monotonic()
    tokens = await asyncio.gather(*[
        one(client, args.model, i, constrained, args.mode, args.max_tokens) for i in range(args.streams)
    ])
    elapsed = time.monotonic() - started
    await client.close()
    return sum(tokens), elapsed


async def main():
    p = argparse.ArgumentParser()
    p.add_argument("--url", required=True)
    p.add_argument("--model", default="smol")
    p.add_argument("--api-key", default="none")
    p.add_argument("--streams", type=int, default=32)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--max-tokens", type=int, default=96)
    p.add_argument("--mode", choices=["json", "regex"], default="regex")
    args = p.parse_args()
    await run(args, False)  # warm-up (compiles nothing, loads caches)
    for r in range(args.runs):
        for constrained in (False, True):
            tokens, elapsed = await run(args, constrained)
            kind = f"constrained-{args.mode}" if constrained else "free"
            print(f"run {r} {kind:18} {tokens:6d} tokens {elapsed:7.2f} s {tokens / elapsed:8.1f} tok/s", flush=True)


asyncio.run(main())
