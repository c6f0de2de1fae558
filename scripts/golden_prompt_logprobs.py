#!/usr/bin/env python3
"""Prompt log-probabilities from llama.cpp (via llama-cpp-python 0.3.36) on the default model
→ tests/golden/smollm2_prompt_logprobs.json (checked by tests/golden_prompt_logprobs.rs).

For every case: tokenize the prompt as scripts/make_golden.py does, evaluate it one token
per llama_decode (n_batch = n_ubatch = 1, the batch-independent reference path; settings
are make_golden.py's), and after each position p take the logits row, log_softmax it in
float64 and record for the next prompt token (p + 1): its logprob, its rank (the number of
tokens whose logit is >= its own, itself included, as vLLM counts) and the TOP_K best
[id, logprob] (ties -> lower id). Entry i scores prompt token i + 1; the first token has
none.

Usage: .venv/bin/python scripts/golden_prompt_logprobs.py   (no network; 4-8 min on 2 cores)
Env: TESSERA_CACHE_DIR (default <repo>/.cache) for the default model.

The llama-cpp-python build matters (see tests/golden/README.md): on a host with AMX, a
native build takes ggml's AMX matmuls and its logits differ from the goldens' reference
by up to ~0.3. These were made with the sdist built as
  CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON
    -DGGML_BMI2=ON -DGGML_AVX512=ON -DGGML_AVX512_VBMI=ON -DGGML_AVX512_VNNI=ON
    -DGGML_AVX512_BF16=ON -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF"
  pip install <cache>/dl/llama_cpp_python-0.3.36.tar.gz numpy jinja2
which reproduces tests/golden/smollm2.json's first_top exactly.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from golden_prompts import LIGHTHOUSE_PASSAGE, user  # noqa: E402
from make_golden import (  # noqa: E402
    DEFAULT_MODEL, REPO, SETTINGS, last_logits, llama_cpp, load, ranked, render_chat, sha256, to_json,
)

TOP_K = 5
OUT = REPO / "tests" / "golden" / "smollm2_prompt_logprobs.json"

# Short literal prompts, a chat-templated one (special tokens), non-ASCII text, and a long
# passage (~200 tokens) that the test runs through chunked prefill.
CASES: list[tuple[str, str | list[dict[str, str]]]] = [
    ("short_paris", "The capital of France is Paris."),
    ("chat_capital", user("What is the capital of France?")),
    ("accents_unicode", "Le café de la gare à Zürich est très agréable. 长城 🚀"),
    ("long_passage", "\n\n".join(LIGHTHOUSE_PASSAGE.split("\n\n")[:2])),
]


def log_softmax(logits: np.ndarray) -> np.ndarray:
    row = logits.astype(np.float64)
    top = row.max()
    return row - (top + np.log(np.exp(row - top).sum()))


def prompt_logprobs(llm: llama_cpp.Llama, prompt_ids: list[int]) -> list[list]:
    llm.reset()
    entries = []
    for p, token in enumerate(prompt_ids[:-1]):
        llm.eval([token])
        logits = last_logits(llm)
        logprobs = log_softmax(logits)
        target = prompt_ids[p + 1]
        rank = int((logits >= logits[target]).sum())
        top = [[int(i), float(logprobs[i])] for i in ranked(logits)[:TOP_K]]
        entries.append([float(logprobs[target]), rank, top])
    return entries


def main() -> None:
    cache = Path(os.environ.get("TESSERA_CACHE_DIR", REPO / ".cache"))
    model = cache / "models" / DEFAULT_MODEL
    if not model.is_file():
        sys.exit(f"error: {model} missing (scripts/fetch-model.sh)")
    llm = load(model)
    template = llm.metadata.get("tokenizer.chat_template")
    add_bos = llm._model.add_bos_token()
    cases = []
    for name, spec in CASES:
        prompt = spec if isinstance(spec, str) else render_chat(template, spec)
        prompt_ids = llm.tokenize(prompt.encode("utf-8"), add_bos=add_bos, special=True)
        cases.append({
            "name": name,
            "prompt": prompt,
            "prompt_ids": prompt_ids,
            "prompt_logprobs": prompt_logprobs(llm, prompt_ids),
        })
        print(f"  {name:<16} {len(prompt_ids):>4} prompt tokens")
    settings = dict(SETTINGS, add_bos=bool(add_bos), top_k=TOP_K)
    settings["entry"] = "[logprob of prompt token i+1, its rank (count of logits >= its own), top_k [id, logprob]]"
    doc = {
        "model_file": DEFAULT_MODEL,
        "model_sha256": sha256(model),
        "generator": f"llama-cpp-python {llama_cpp.__version__}",
        "settings": settings,
        "cases": cases,
    }
    OUT.write_text(to_json(doc) + "\n", encoding="utf-8")
    print(f"{OUT}: {len(cases)} cases")


if __name__ == "__main__":
    main()
