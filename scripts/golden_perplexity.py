#!/usr/bin/env python3
"""llama.cpp's perplexity on the default model → tests/golden/smollm2_perplexity.json, the
oracle of tests/perplexity.rs (`tessera perplexity` must give the same numbers within 0.1 %).

Runs `llama-perplexity` (built by scripts/build-llama-cpp.sh from the llama.cpp vendored in
llama-cpp-python 0.3.36) on tests/fixtures/perplexity/lighthouse.txt for each CTX, with the
settings of every other golden (tests/golden/README.md): `-ub 1` (llama.cpp's single-token
path: its batched prefill switches kernels and moves the number by up to ~0.5 %), `-fa off`,
f16 K/V (the default), `-b CTX` (one sequence per batch), and `--no-repack`: the native
build routes Q4_1 matmuls to ggml's AMX kernels on hosts with AMX, which crash in this VM
(SIGSEGV in ggml_backend_amx_mul_mat) and are not the CPU kernels the goldens use.
Measured on this text, ctx 128: 40.3924 with these settings (tessera: 40.3924); batched
(`-ub 512`) 40.5745, batched with flash attention 40.6154, `-ub 1` with flash attention
40.5367 — llama.cpp's own settings move it by 0.1-0.6 %.

Usage: .venv/bin/python scripts/golden_perplexity.py   (or any python3; no packages needed)
Env: TESSERA_CACHE_DIR (default <repo>/.cache) for the default model and the build.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MODEL = "SmolLM2-135M-Instruct.Q4_1.gguf"
TEXT = "tests/fixtures/perplexity/lighthouse.txt"
CTXS = (128, 256)


def main() -> None:
    cache = Path(os.environ.get("TESSERA_CACHE_DIR", REPO / ".cache"))
    built = subprocess.run([str(REPO / "scripts" / "build-llama-cpp.sh")], check=True,
                           capture_output=True, text=True).stdout.split()
    binary = next((p for p in built if p.endswith("/llama-perplexity")), None)
    if binary is None:
        sys.exit("error: scripts/build-llama-cpp.sh printed no llama-perplexity path")
    model = cache / "models" / MODEL
    runs = []
    for ctx in CTXS:
        args = ["-m", str(model), "-f", str(REPO / TEXT), "-c", str(ctx), "-b", str(ctx), "-ub", "1",
                "-fa", "off", "-t", "2", "--no-repack"]
        out = subprocess.run([binary, *args], check=True, capture_output=True, text=True)
        log = out.stdout + out.stderr
        chunks = [float(v) for v in re.findall(r"\[\d+\]([0-9.]+),", log)]
        final = re.search(r"Final estimate: PPL = ([0-9.]+) \+/- ([0-9.]+)", log)
        if not chunks or final is None:
            sys.exit(f"error: no perplexity in llama-perplexity's output:\n{log[-2000:]}")
        runs.append({"ctx": ctx, "chunks": chunks, "ppl": float(final.group(1)),
                     "error": float(final.group(2))})
        print(f"ctx {ctx}: PPL {final.group(1)} over {len(chunks)} chunks")
    doc = {
        "model_file": MODEL,
        "text_file": TEXT,
        "generator": "llama-perplexity (llama.cpp of llama-cpp-python 0.3.36, scripts/build-llama-cpp.sh)",
        "command": "llama-perplexity -m MODEL -f TEXT -c CTX -b CTX -ub 1 -fa off -t 2 --no-repack",
        "runs": runs,
    }
    path = REPO / "tests" / "golden" / "smollm2_perplexity.json"
    path.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    print(path)


if __name__ == "__main__":
    main()
