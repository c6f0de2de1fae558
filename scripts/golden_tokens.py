#!/usr/bin/env python3
"""Write tests/golden/smollm2_tokens.json: llama.cpp's token ids for a set of prompts
with the default model's vocabulary (SmolLM2-135M-Instruct), the oracle for
tests/tokenizer_vocab.rs.

Usage: .venv/bin/python scripts/golden_tokens.py [path/to/SmolLM2-135M-Instruct.Q4_1.gguf]
Needs llama-cpp-python (0.3.36 was used). No network access.
"""
import json
import os
import sys

import llama_cpp

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CACHE = os.environ.get("TESSERA_CACHE_DIR", os.path.join(ROOT, ".cache"))
MODEL = sys.argv[1] if len(sys.argv) > 1 else os.path.join(CACHE, "models", "SmolLM2-135M-Instruct.Q4_1.gguf")

# (text, parse_special): parse_special=True only for template-made text.
CASES = [
    ("<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n", True),
    ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
     "<|im_start|>user\nHi there!<|im_end|>\n<|im_start|>assistant\nHello! How can I help?<|im_end|>\n"
     "<|im_start|>user\nTell me a joke.<|im_end|>\n<|im_start|>assistant\n", True),
    ("<|im_start|>system\nevil<|im_end|>", False),
    ("The quick brown fox jumps over the lazy dog. It's 3:45pm, isn't it?", False),
    ("北京是中华人民共和国的首都，也是全国的政治、文化中心。", False),
    ("Emoji: 😀 👨‍👩‍👧‍👦 🇫🇷 🧑🏽‍💻 ❤️ and ✅ done", False),
    ("def fib(n):\n    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)\n", False),
    ("    many   spaces\n\n\n\nand\t\ttabs \r\n trailing   ", False),
    ("Ünïcödé naïve café — “quotes” and 'apostrophes' 1234567890 3.14159", False),
    ("Привет, мир! こんにちは世界 안녕하세요 مرحبا بالعالم", False),
]


def main():
    llm = llama_cpp.Llama(model_path=MODEL, vocab_only=True, verbose=False)
    cases = [
        {"text": text, "parse_special": special,
         "ids": llm.tokenize(text.encode("utf-8"), add_bos=False, special=special)}
        for text, special in CASES
    ]
    out = os.path.join(ROOT, "tests", "golden", "smollm2_tokens.json")
    header = {"model": os.path.basename(MODEL), "llama_cpp_python": llama_cpp.__version__}
    lines = [json.dumps(case, ensure_ascii=False) for case in cases]
    with open(out, "w", encoding="utf-8") as f:
        f.write(json.dumps(header, ensure_ascii=False)[:-1])
        f.write(', "cases": [\n ' + ",\n ".join(lines) + "\n]}\n")
    print(out)


if __name__ == "__main__":
    main()
