#!/usr/bin/env python3
"""Greedy reference outputs from llama.cpp (via llama-cpp-python 0.3.36) → tests/golden/*.json.

For every case: tokenize the prompt with llama.cpp (special=True, add_bos as the model's
metadata says), eval it, then 32 times take the last logits row, argmax (ties → lowest id)
and eval that token. No sampler and no stop at EOS: always N_PREDICT tokens.

Chat cases are rendered with the model's own chat template (jinja2, trim_blocks and
lstrip_blocks as in transformers' apply_chat_template, add_generation_prompt=True); their
`messages` are kept in the JSON so the template rendering can be checked as well.

Usage:
  make_golden.py                      # smollm2.json + one JSON per tests/fixtures/*.gguf
  make_golden.py --only smollm2       # or a fixture stem
  make_golden.py --noise-check        # also rerun teacher-forced with other settings, report drift
  make_golden.py --kv-cache-dtype q8_0  # llama.cpp's -ctk q8_0 -ctv q8_0 -fa on → <stem>_kv_q8_0.json
Env: TESSERA_CACHE_DIR (default <repo>/.cache) for the default model.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from pathlib import Path

import jinja2.sandbox
import llama_cpp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from golden_prompts import FIXTURE_CASES, SMOLLM2_CASES  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
DEFAULT_MODEL = "SmolLM2-135M-Instruct.Q4_1.gguf"
N_PREDICT = 32
N_FIRST_TOP = 10
# Prompts are evaluated one token per llama_decode (n_batch = n_ubatch = 1): llama.cpp's
# batched prefill switches to other kernels (tinyBLAS sgemm, different summation orders),
# so its logits depend on how many tokens share a ubatch (measured: gaps move by ~0.05
# after 5 prompt tokens). Its single-token path is the one reference that does not
# depend on batching, and tessera (batch invariant by design) reproduces it to ~1e-5.
SETTINGS = {
    "n_ctx": 4096,
    "n_batch": 1,
    "n_ubatch": 1,
    "n_threads": 2,
    "flash_attn": False,
    "type_k": "f16",
    "type_v": "f16",
    "n_gpu_layers": 0,
    "logits_all": False,
}

# `--kv-cache-dtype q8_0`: llama.cpp's `-ctk q8_0 -ctv q8_0`. A quantized V cache needs
# flash attention in llama.cpp (`-fa on`), whose CPU kernel for a Q8_0 K quantizes each
# query row to Q8_0 and takes ggml_vec_dot_q8_0_q8_0, and dequantizes V rows to f32
# (ggml_compute_forward_flash_attn_ext_f16_one_chunk). With a quantized cache and
# head_dim % 64 == 0 llama.cpp also Hadamard-rotates Q/K/V and the attention output
# (llama_kv_cache::attn_rot_k/v) unless LLAMA_ATTN_ROT_DISABLE is set, which this script
# refuses. tessera's `--kv-cache-dtype q8_0` follows all of it. Everything else as SETTINGS.
KV_DTYPES = {
    "f16": {},
    "q8_0": {"flash_attn": True, "type_k": "q8_0", "type_v": "q8_0"},
}
GGML_TYPES = {"f16": llama_cpp.GGML_TYPE_F16, "q8_0": llama_cpp.GGML_TYPE_Q8_0}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def load(path: Path, **overrides) -> llama_cpp.Llama:
    """llama.cpp with SETTINGS (f16 K/V cache by default); overrides only for noise checks."""
    cache = {"type_k": GGML_TYPES[SETTINGS["type_k"]], "type_v": GGML_TYPES[SETTINGS["type_v"]]}
    return llama_cpp.Llama(
        str(path),
        n_ctx=SETTINGS["n_ctx"],
        n_batch=SETTINGS["n_batch"],
        n_ubatch=SETTINGS["n_ubatch"],
        n_threads=SETTINGS["n_threads"],
        n_threads_batch=SETTINGS["n_threads"],
        n_gpu_layers=SETTINGS["n_gpu_layers"],
        seed=0,
        verbose=False,
        **{"flash_attn": SETTINGS["flash_attn"], "logits_all": SETTINGS["logits_all"], **cache, **overrides},
    )


def render_chat(template: str, messages: list[dict[str, str]]) -> str:
    env = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)

    def raise_exception(message: str) -> None:
        raise jinja2.exceptions.TemplateError(message)

    env.globals["raise_exception"] = raise_exception
    return env.from_string(template).render(messages=messages, add_generation_prompt=True)


def last_logits(llm: llama_cpp.Llama) -> np.ndarray:
    """Logits of the last evaluated token: [n_vocab] f32 (copied out of llama.cpp)."""
    return np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(llm.n_vocab(),)).copy()


def ranked(logits: np.ndarray) -> np.ndarray:
    """Token ids by descending logit; equal logits keep ascending id order."""
    return np.argsort(-logits, kind="stable")


def greedy(llm: llama_cpp.Llama, prompt_ids: list[int]) -> tuple[list[int], list[float], np.ndarray]:
    """(output ids, per-step top1-top2 margins, first-step logits)."""
    llm.reset()  # n_tokens = 0; the next eval drops every cached position
    llm.eval(prompt_ids)
    output_ids, margins, first = [], [], None
    for _ in range(N_PREDICT):
        logits = last_logits(llm)
        if first is None:
            first = logits
        order = ranked(logits)
        margins.append(float(logits[order[0]] - logits[order[1]]))
        output_ids.append(int(order[0]))
        llm.eval([int(order[0])])
    return output_ids, margins, first


def run_case(llm: llama_cpp.Llama, template: str | None, name: str, spec) -> dict:
    case: dict = {"name": name}
    if isinstance(spec, str):
        prompt = spec
    else:
        if template is None:
            sys.exit(f"error: case {name} is a chat case but the model has no chat template")
        prompt = render_chat(template, spec)
        case["messages"] = spec
    add_bos = llm._model.add_bos_token()
    prompt_ids = llm.tokenize(prompt.encode("utf-8"), add_bos=add_bos, special=True)
    output_ids, margins, first = greedy(llm, prompt_ids)
    text = llm.detokenize(output_ids, special=True).decode("utf-8", errors="replace")
    case.update(
        prompt=prompt,
        prompt_ids=prompt_ids,
        output_ids=output_ids,
        output_text=text,
        min_margin=min(margins),
        step_margins=[round(m, 4) for m in margins],
        first_top=[[int(i), float(first[i])] for i in ranked(first)[:N_FIRST_TOP]],
    )
    return case


def golden(model: Path, model_file: str, cases) -> dict:
    llm = load(model)
    template = llm.metadata.get("tokenizer.chat_template")
    settings = dict(SETTINGS, add_bos=bool(llm._model.add_bos_token()), n_predict=N_PREDICT)
    settings["greedy"] = "argmax of the last logits row, ties -> lowest id; no stop at EOS"
    settings["tokenize"] = "llama_tokenize(prompt, add_special=add_bos, parse_special=true)"
    settings["output_text"] = "detokenize(output_ids, special=true) as UTF-8, invalid bytes -> U+FFFD"
    return {
        "model_file": model_file,
        "model_sha256": sha256(model),
        "generator": f"llama-cpp-python {llama_cpp.__version__}",
        "settings": settings,
        "cases": [run_case(llm, template, name, spec) for name, spec in cases],
    }


NOISE_VARIANTS = {
    "flash_attn": {"flash_attn": True},
    "f32_kv_cache": {"type_k": llama_cpp.GGML_TYPE_F32, "type_v": llama_cpp.GGML_TYPE_F32},
    "one_batch": {"logits_all": True},  # prompt + outputs in one eval, as a prefill would
}


def forced_logits(llm: llama_cpp.Llama, prompt_ids: list[int], output_ids: list[int]) -> np.ndarray:
    """Teacher-forced logits [N_PREDICT, n_vocab]: row k predicts output k from the golden prefix."""
    llm.reset()
    if llm._logits_all:
        llm.eval(prompt_ids + output_ids[:-1])
        start = len(prompt_ids) - 1
        return np.array(llm.scores[start : start + len(output_ids)], dtype=np.float32)
    llm.eval(prompt_ids)
    rows = []
    for token in output_ids:
        rows.append(last_logits(llm))
        llm.eval([token])
    return np.stack(rows)


def noise_check(model: Path, doc: dict) -> None:
    """Rerun every case teacher-forced under other valid llama.cpp settings.

    Prints, per case: the largest change of the golden token's margin (its logit minus the
    best other logit) over the 32 steps, and the steps where another token wins, with the
    golden margin there. A consumer can then pick a margin below which steps are skipped.
    """
    for variant, overrides in NOISE_VARIANTS.items():
        llm = load(model, **overrides)
        print(f"  noise check: {variant} (teacher-forced)")
        worst = 0.0
        for case in doc["cases"]:
            rows = forced_logits(llm, case["prompt_ids"], case["output_ids"])
            drifts, flips = [], []
            for k, (row, token) in enumerate(zip(rows, case["output_ids"])):
                others = np.delete(row, token)
                margin = float(row[token] - others.max())
                drifts.append(abs(margin - case["step_margins"][k]))
                if margin < 0 or (margin == 0 and int(np.argmax(row)) != token):
                    flips.append(f"step {k} (golden margin {case['step_margins'][k]:.4f})")
                    worst = max(worst, case["step_margins"][k])
            print(f"    {case['name']:<24} max margin drift {max(drifts):.3f}; "
                  f"{'argmax agrees at all 32 steps' if not flips else 'flips at ' + ', '.join(flips)}")
        print(f"  {variant}: largest golden margin at a flipped step: {worst:.4f}")
        del llm


def to_json(value, indent: int = 0) -> str:
    """JSON with dicts one key per line and lists of scalars / pairs on one line."""
    pad, inner = "  " * indent, "  " * (indent + 1)
    if isinstance(value, dict):
        items = [f"{inner}{json.dumps(k)}: {to_json(v, indent + 1)}" for k, v in value.items()]
        return "{\n" + ",\n".join(items) + "\n" + pad + "}"
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        return "[\n" + ",\n".join(inner + to_json(v, indent + 1) for v in value) + "\n" + pad + "]"
    return json.dumps(value, ensure_ascii=False, separators=(", ", ": "))


def targets(only: str | None) -> list[tuple[str, Path, str, list]]:
    cache = Path(os.environ.get("TESSERA_CACHE_DIR", REPO / ".cache"))
    found = [("smollm2", cache / "models" / DEFAULT_MODEL, DEFAULT_MODEL, SMOLLM2_CASES)]
    for path in sorted((REPO / "tests" / "fixtures").glob("*.gguf")):
        found.append((path.stem, path, str(path.relative_to(REPO)), FIXTURE_CASES))
    chosen = [t for t in found if only in (None, t[0])]
    if not chosen:
        sys.exit(f"error: no target named {only!r}; have {[t[0] for t in found]}")
    return chosen


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", help="smollm2 or a fixture stem")
    ap.add_argument("--out-dir", default=str(REPO / "tests" / "golden"))
    ap.add_argument("--noise-check", action="store_true")
    ap.add_argument("--kv-cache-dtype", choices=sorted(KV_DTYPES), default="f16",
                    help="K/V cache type (q8_0: -ctk q8_0 -ctv q8_0 -fa on; files <stem>_kv_q8_0.json)")
    args = ap.parse_args()
    SETTINGS.update(KV_DTYPES[args.kv_cache_dtype])
    if os.environ.get("LLAMA_ATTN_ROT_DISABLE"):
        sys.exit("error: LLAMA_ATTN_ROT_DISABLE is set; the goldens need llama.cpp's default "
                 "rotation of a quantized K/V cache")
    suffix = "" if args.kv_cache_dtype == "f16" else f"_kv_{args.kv_cache_dtype}"
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for stem, model, model_file, cases in targets(args.only):
        if not model.is_file():
            sys.exit(f"error: {model} missing (default model: scripts/fetch-model.sh)")
        doc = golden(model, model_file, cases)
        out = out_dir / f"{stem}{suffix}.json"
        out.write_text(to_json(doc) + "\n", encoding="utf-8")
        print(f"{out}: {len(doc['cases'])} cases")
        for case in doc["cases"]:
            print(f"  {case['name']:<24} prompt {len(case['prompt_ids']):>4} tokens,"
                  f" min_margin {case['min_margin']:.4f}")
        if args.noise_check:
            noise_check(model, doc)


if __name__ == "__main__":
    main()
