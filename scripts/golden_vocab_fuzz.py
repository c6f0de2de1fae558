#!/usr/bin/env python3
"""Write tests/golden/vocab_fuzz.json: llama.cpp's ids for seeded random strings (mixed
scripts, emoji, whitespace runs, control-token texts) on every llama.cpp vocab file and
the default model, with special tokens parsed and not parsed. Covers the vocabs that
ship without .inp/.out vectors (aquila, baichuan, gpt-neox) and the special-token path.

Usage: .venv/bin/python scripts/golden_vocab_fuzz.py  (needs llama-cpp-python; no network)
"""
import glob
import json
import os
import random

import llama_cpp

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CACHE = os.environ.get("TESSERA_CACHE_DIR", os.path.join(ROOT, ".cache"))
SKIP = ("bert", "nomic")  # WordPiece and Unigram vocabs: not supported
POOL = list("abcXYZ   \n\n\t\r0123456789.,!?;:'\"()[]<>|/\\-_=+*&^%$#@~`") + [
    "你好", "世界", "привет", "ภาษาไทย", "हिन्दी", "العربية", "한국어", "カタカナ", "😀", "👨‍👩‍👧",
    "🇫🇷", "🦙", "✅", "é", "e\u0301", "\u00a0", "\u2028", "\u3000", "\u2003", "ß", "İ", "½",
    "'s", "'RE", " 's", "   ", "\n\n\n", " \n ", "<|im_start|>", "<|im_end|>", "<s>", "</s>",
    "<|endoftext|>", "<|user|>", "<|end|>", "<|eot_id|>", "<unk>", "[PAD151650]", "<0x0A>",
    "▁", "Ġ", "õ", "Hello", " world", "333333", "3.14159", "def f(x):\n    return x",
]


def main():
    rng = random.Random(20241129)
    texts = ["".join(rng.choice(POOL) for _ in range(rng.randint(1, 12))) for _ in range(40)]
    files = sorted(glob.glob(os.path.join(CACHE, "vocab", "ggml-vocab-*.gguf")))
    files.append(os.path.join(CACHE, "models", "SmolLM2-135M-Instruct.Q4_1.gguf"))
    out = {"texts": texts, "vocabs": {}}
    for path in files:
        name = os.path.basename(path)
        if any(s in name for s in SKIP):
            continue
        llm = llama_cpp.Llama(model_path=path, vocab_only=True, verbose=False)
        enc = lambda t, special: llm.tokenize(t.encode("utf-8"), add_bos=False, special=special)
        out["vocabs"][name] = {"plain": [enc(t, False) for t in texts],
                               "special": [enc(t, True) for t in texts]}
    path = os.path.join(ROOT, "tests", "golden", "vocab_fuzz.json")
    with open(path, "w", encoding="utf-8") as f:
        f.write(json.dumps(out, ensure_ascii=False, separators=(",", ":")))
        f.write("\n")
    print(path)


if __name__ == "__main__":
    main()
