#!/usr/bin/env python3
"""A random-weight GGUF with Qwen2.5-0.5B-Instruct's exact shapes, in llama.cpp's Q4_K_M mix.

The real weights cannot be downloaded here; decode and prefill speed depend on shapes and
tensor types, not on the values, so this model benches like the real one (its text is
gibberish). It is written as an F16 GGUF with gguf-py (seeded numpy weights, norms and biases
in F32 as llama.cpp's converter keeps them), then llama.cpp's own `llama-quantize ... Q4_K_M`
picks the mix: Q4_K / Q6_K where a row is a multiple of 256 (ffn_down, 4864 wide), and its
fallbacks Q5_0 / Q8_0 where it is not (every 896-wide row: attention, ffn_gate/up, the tied
token embedding).

Shape (Qwen2.5-0.5B-Instruct's config.json): arch qwen2, hidden 896, 24 layers, 14 heads,
2 KV heads, head_dim 64, intermediate 4864, vocab 151936, tied embeddings, rope theta 1e6,
rms eps 1e-6, QKV biases, context 32768.

Vocabulary: llama.cpp's models/ggml-vocab-qwen2.gguf whole (Qwen2's byte-level BPE: 151643
normal tokens, 151387 merges, `<|endoftext|>` `<|im_start|>` `<|im_end|>`, and the
`[PADnnnnnn]` rows up to 151936, exactly as llama.cpp's converter writes Qwen2.5), with
Qwen2.5-Instruct's ids: bos = pad = `<|endoftext|>` (151643), eos = eot = `<|im_end|>`
(151645), add_bos false. Chat template: Qwen2.5-Instruct's (llama.cpp models/templates).

Weights use scripts/make_fixtures.py's gains (unit-variance embedding rows, 1/sqrt(fan_in)
matmuls), which keep the residual stream and the logits finite and bounded at any depth
(every layer reads the stream through an RMS norm).

Usage: scripts/make_qwen05_q4km.py [--out PATH] [--llama-quantize PATH] [--keep-f16] [--f16-only]
Default output: <cache>/models/qwen2.5-0.5b-shape-random.Q4_K_M.gguf (the git-ignored
cache, TESSERA_CACHE_DIR or <repo>/.cache). Needs gguf 0.19 + numpy, and llama-quantize
(default: built by scripts/build-llama-cpp.sh). Prints the output path.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import gguf
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_fixtures as mf  # noqa: E402

QWEN05 = mf.Fixture(
    stem="qwen2.5-0.5b-shape-random", arch="qwen2", seed=20251204, n_layer=24, n_embd=896,
    n_head=14, n_head_kv=2, head_dim=64, n_ff=4864, tied=True, rope_base=1e6, rms_eps=1e-6,
    add_bos=False, base_type="Q4_K_M", quant_args=(), n_ctx_train=32768,
)
N_VOCAB = 151936


def qwen2_full_vocab(src: Path) -> mf.Vocab:
    """llama.cpp's whole Qwen2 vocab with Qwen2.5-Instruct's special-token ids."""
    reader = gguf.GGUFReader(src)
    tokens = reader.fields["tokenizer.ggml.tokens"].contents()
    types = reader.fields["tokenizer.ggml.token_type"].contents()
    merges = reader.fields["tokenizer.ggml.merges"].contents()
    if len(tokens) != N_VOCAB:
        sys.exit(f"error: {src} holds {len(tokens)} tokens, not {N_VOCAB}")
    ids = {t: i for i, t in enumerate(tokens) if t in mf.SPECIAL_TOKENS}
    if set(ids) != set(mf.SPECIAL_TOKENS):
        sys.exit(f"error: {src} lacks one of {mf.SPECIAL_TOKENS}")
    return mf.Vocab(
        tokens=list(tokens), token_types=[int(t) for t in types], merges=list(merges),
        bos_id=ids["<|endoftext|>"], eos_id=ids["<|im_end|>"], eot_id=ids["<|im_end|>"],
        pad_id=ids["<|endoftext|>"],
    )


def write_f16(vocab: mf.Vocab, chat_template: str, path: Path) -> None:
    """The F16 GGUF: 2-D weights in F16, norms and biases in F32 (the converter's rule)."""
    fx = QWEN05
    weights = mf.random_weights(fx, len(vocab.tokens))
    for name, w in weights.items():
        if not np.all(np.isfinite(w)):
            sys.exit(f"error: {name} holds a non-finite value")
        if w.ndim == 2:
            weights[name] = w.astype(np.float16)
    writer = gguf.GGUFWriter(path, fx.arch)
    writer.add_name(fx.stem)
    writer.add_description("tessera bench model: Qwen2.5-0.5B-Instruct's shapes, seeded random weights")
    writer.add_context_length(fx.n_ctx_train)
    writer.add_embedding_length(fx.n_embd)
    writer.add_block_count(fx.n_layer)
    writer.add_feed_forward_length(fx.n_ff)
    writer.add_head_count(fx.n_head)
    writer.add_head_count_kv(fx.n_head_kv)
    writer.add_rope_freq_base(fx.rope_base)
    writer.add_layer_norm_rms_eps(fx.rms_eps)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    mf.finish_gguf(writer, vocab, fx.add_bos, chat_template, weights)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(mf.cache_dir() / "models" / f"{QWEN05.stem}.Q4_K_M.gguf"))
    ap.add_argument("--llama-quantize", help="path to llama-quantize (default: scripts/build-llama-cpp.sh)")
    ap.add_argument("--keep-f16", action="store_true", help="keep the F16 GGUF beside the output")
    ap.add_argument("--f16-only", action="store_true",
                    help="write only the F16 GGUF to --out (no llama-quantize; the GPU bench's model)")
    args = ap.parse_args()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    llama_cpp = mf.vendored_llama_cpp()
    vocab = qwen2_full_vocab(llama_cpp / "models" / "ggml-vocab-qwen2.gguf")
    chat_template = (llama_cpp / "models" / "templates" / "Qwen-Qwen2.5-7B-Instruct.jinja").read_text()
    if args.f16_only:
        write_f16(vocab, chat_template, out)
        print(out)
        return
    llama_quantize = mf.find_llama_quantize(args.llama_quantize)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        f16 = out.with_suffix(".F16.gguf") if args.keep_f16 else Path(tmp) / f"{QWEN05.stem}.F16.gguf"
        write_f16(vocab, chat_template, f16)
        mf.quantize(llama_quantize, QWEN05, f16, out)
    counts, _ = mf.tensor_types(out)
    print("tensor types: " + ", ".join(f"{ty} x{n}" for ty, n in sorted(counts.items())), file=sys.stderr)
    print(f"{out.stat().st_size} bytes, sha256 {mf.sha256(out)}", file=sys.stderr)
    print(out)


if __name__ == "__main__":
    main()
