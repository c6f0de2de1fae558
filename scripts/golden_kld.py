#!/usr/bin/env python3
"""llama.cpp's KL divergence of a quantized fixture against its base → the oracle of
tests/perplexity_kld.rs.

1. `llama-perplexity --kl-divergence-base` on the F32 InternLM2 fixture saves its scored rows
   (chunks of CTX tokens of tests/fixtures/perplexity/lighthouse.txt, CHUNKS of them) to
   tests/golden/internlm2-tiny-f32.kld, in llama-perplexity's own format;
2. `llama-perplexity --kl-divergence` of the Q8_0 fixture against that file: its statistics
   go to tests/golden/internlm2-tiny-kld.json.
`tessera perplexity` must read that file, give the same statistics, and write the same file
from the F32 fixture. Settings as every other golden (tests/golden/README.md): `-ub 1`,
`-fa off`, f16 K/V, `--no-repack`, 2 threads. The fixture is random-weight: its
distributions are very peaked (PPL ~1e16), which the statistics only have to reproduce.

Usage: .venv/bin/python scripts/golden_kld.py   (or any python3; no packages needed)
Env: TESSERA_CACHE_DIR (default <repo>/.cache) for the build (scripts/build-llama-cpp.sh).
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BASE = "tests/fixtures/internlm2-tiny-f32.gguf"
QUANTIZED = "tests/fixtures/internlm2-tiny-q8_0.gguf"
TEXT = "tests/fixtures/perplexity/lighthouse.txt"
SAVED = "tests/golden/internlm2-tiny-f32.kld"
CTX, CHUNKS = 128, 2
SETTINGS = ["-c", str(CTX), "-b", str(CTX), "-ub", "1", "-fa", "off", "-t", "2", "--no-repack"]

FIGURES = {
    "ppl": r"Mean PPL\(Q\)\s*:\s*([0-9.]+)",
    "ppl_base": r"Mean PPL\(base\)\s*:\s*([0-9.]+)",
    "log_ppl_ratio": r"Mean ln\(PPL\(Q\)/PPL\(base\)\)\s*:\s*(-?[0-9.]+)",
    "kld_mean": r"Mean    KLD:\s*(-?[0-9.]+)",
    "kld_max": r"Maximum KLD:\s*(-?[0-9.]+)",
    "kld_median": r"Median  KLD:\s*(-?[0-9.]+)",
    "same_top_percent": r"Same top p:\s*([0-9.]+)",
}


def run(binary: str, args: list[str]) -> str:
    out = subprocess.run([binary, *args], check=True, capture_output=True, text=True)
    return out.stdout + out.stderr


def main() -> None:
    built = subprocess.run([str(REPO / "scripts" / "build-llama-cpp.sh")], check=True,
                           capture_output=True, text=True).stdout.split()
    binary = next((p for p in built if p.endswith("/llama-perplexity")), None)
    if binary is None:
        sys.exit("error: scripts/build-llama-cpp.sh printed no llama-perplexity path")
    run(binary, ["-m", str(REPO / BASE), "-f", str(REPO / TEXT), *SETTINGS, "--chunks", str(CHUNKS),
                 "--kl-divergence-base", str(REPO / SAVED)])
    log = run(binary, ["-m", str(REPO / QUANTIZED), *SETTINGS,
                       "--kl-divergence-base", str(REPO / SAVED), "--kl-divergence"])
    figures = {}
    for name, pattern in FIGURES.items():
        found = re.search(pattern, log)
        if found is None:
            sys.exit(f"error: no {name} in llama-perplexity's output:\n{log[-3000:]}")
        figures[name] = float(found.group(1))
    doc = {
        "base_model": BASE,
        "quantized_model": QUANTIZED,
        "text_file": TEXT,
        "saved_rows": SAVED,
        "ctx": CTX,
        "chunks": CHUNKS,
        "generator": "llama-perplexity (llama.cpp of llama-cpp-python 0.3.36, scripts/build-llama-cpp.sh)",
        "command": "llama-perplexity -m BASE -f TEXT " + " ".join(SETTINGS)
                   + f" --chunks {CHUNKS} --kl-divergence-base SAVED; llama-perplexity -m QUANTIZED "
                   + " ".join(SETTINGS) + " --kl-divergence-base SAVED --kl-divergence",
        "figures": figures,
    }
    path = REPO / "tests" / "golden" / "internlm2-tiny-kld.json"
    path.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    print(path, figures)


if __name__ == "__main__":
    main()
