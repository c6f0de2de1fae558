#!/usr/bin/env python3
"""Tiny Hugging Face model folders (tests/fixtures/hf-*/) + the same models as GGUF + goldens.

For each fixture in FIXTURES this writes, under tests/fixtures/<stem>/:
- config.json, tokenizer.json, tokenizer_config.json (+ generation_config.json), and
  seeded random weights as safetensors (one file, or shards with
  model.safetensors.index.json), F32 or BF16 as the fixture says;
- <stem>.gguf: the folder converted by llama.cpp's own convert_hf_to_gguf.py (outtype =
  the fixture's dtype, so both files hold the same numbers);
and tests/golden/<stem>.json: llama.cpp's greedy outputs on that GGUF (make_golden.py's
single-token path and prompts).

Vocabulary: make_fixtures.py's trimmed qwen2 vocab (here N_NORMAL = 1000 normal tokens, all
256 byte-level symbols among them, + <|endoftext|> <|im_start|> <|im_end|>), written as a
Qwen2-style tokenizer.json (NFC, the qwen2 split regex, ByteLevel, BPE with the merges).
The converter identifies pre-tokenizers by hashing a test string's token ids; a trimmed
vocab has new ids, so its hash lookup is replaced by "qwen2" (what it returns for the full
Qwen2 tokenizer). Weights: make_fixtures.random_weights (same scales), GGUF names mapped to
HF names; the converter then permutes the llama Q/K rows as it does for any HF llama.

InternLM2 (INTERNLM2_STEM, tests/fixtures/hf-internlm2-tiny-f16/): the inverse of llama.cpp's
converter (conversion/internlm.py) applied to tests/fixtures/internlm2-tiny-f16.gguf, so the
folder's golden is that GGUF's (tests/golden/internlm2-tiny-f16.json, llama.cpp's ids): Q/K
un-permuted and fused with V into `attention.wqkv` (per KV head [q x q_per_kv, k, v]), the vocab
as a SentencePiece BPE tokenizer.model (protobuf written with sentencepiece's
sentencepiece_model_pb2; the added tokens as `[UNUSED_TOKEN_n]` pieces, named by
tokenizer_config.json's added_tokens_decoder, as InternLM2-chat ships them), InternLM2's
config.json (auto_map, `bias`) and tokenizer_config.json. The script checks that numpy
transcriptions of the converter's `modify_tensors` split and `set_vocab` rules (run through
sentencepiece's SentencePieceProcessor) give back the GGUF's tensors and vocabulary exactly.
It does not run convert_hf_to_gguf.py itself (that needs torch; this entry does not).

Usage: .venv/bin/python scripts/make_hf_fixture.py [--only STEM]
Needs: torch, transformers, safetensors, tokenizers, gguf, numpy, llama-cpp-python (the
converter's own requirements: requirements/requirements-convert_hf_to_gguf.txt); the InternLM2
entry needs only gguf, numpy, safetensors and sentencepiece.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import hf_internlm2  # noqa: E402
import make_fixtures  # noqa: E402
import make_golden  # noqa: E402
from golden_prompts import FIXTURE_CASES  # noqa: E402

REPO = make_fixtures.REPO
N_NORMAL = 1000
QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
               r"|\s*[\r\n]+|\s+(?!\S)|\s+")


@dataclasses.dataclass(frozen=True)
class HfFixture:
    stem: str
    model_type: str  # "llama" or "qwen2"
    dtype: str  # "float32" or "bfloat16"
    shards: int  # 1: model.safetensors; >1: model-0000i-of-0000n.safetensors + index
    shape: make_fixtures.Fixture


def shape(stem: str, arch: str, seed: int, n_head: int, n_head_kv: int, tied: bool, rope_base: float,
          rms_eps: float, add_bos: bool) -> make_fixtures.Fixture:
    return make_fixtures.Fixture(
        stem=stem, arch=arch, seed=seed, n_layer=2, n_embd=64, n_head=n_head, n_head_kv=n_head_kv,
        head_dim=64 // n_head, n_ff=128, tied=tied, rope_base=rope_base, rms_eps=rms_eps, add_bos=add_bos,
        base_type="", quant_args=(),
    )


FIXTURES = [
    # llama: GQA 4/2 heads of 16, BF16, separate lm_head, BOS added by the post-processor,
    # two shards with an index, a list-form chat template, two EOS ids in generation_config.
    HfFixture("hf-llama-tiny-bf16", "llama", "bfloat16", 2,
              shape("hf-llama-tiny-bf16", "llama", 20240611, 4, 2, False, 1e4, 1e-5, True)),
    # qwen2: Q/K/V biases, 2/1 heads of 32, F32, tied embeddings, one file.
    HfFixture("hf-qwen2-tiny-f32", "qwen2", "float32", 1,
              shape("hf-qwen2-tiny-f32", "qwen2", 20240612, 2, 1, True, 1e6, 1e-6, False)),
]

GGUF_TO_HF = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
    "attn_norm.weight": "input_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_q.bias": "self_attn.q_proj.bias",
    "attn_k.bias": "self_attn.k_proj.bias",
    "attn_v.bias": "self_attn.v_proj.bias",
    "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}


def hf_name(gguf_name: str) -> str:
    if gguf_name.startswith("blk."):
        _, layer, rest = gguf_name.split(".", 2)
        return f"model.layers.{layer}.{GGUF_TO_HF[rest]}"
    return GGUF_TO_HF[gguf_name]


def write_weights(fx: HfFixture, n_vocab: int, out: Path) -> None:
    import torch
    from safetensors.torch import save_file

    dtype = getattr(torch, fx.dtype)
    arrays = make_fixtures.random_weights(fx.shape, n_vocab)
    tensors = {hf_name(k): torch.from_numpy(np.ascontiguousarray(v)).to(dtype) for k, v in arrays.items()}
    names = sorted(tensors)
    if fx.shards == 1:
        save_file(tensors, out / "model.safetensors", metadata={"format": "pt"})
        return
    # Shard by layer: the embedding + layer 0 first, everything else after.
    first = [n for n in names if n.startswith(("model.embed_tokens", "model.layers.0."))]
    groups = [first, [n for n in names if n not in first]]
    weight_map = {}
    for i, group in enumerate(groups):
        file = f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors"
        save_file({n: tensors[n] for n in group}, out / file, metadata={"format": "pt"})
        weight_map.update({n: file for n in group})
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")


def write_tokenizer(fx: HfFixture, vocab: make_fixtures.Vocab, template: str, out: Path) -> None:
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    n_normal = len(vocab.tokens) - len(make_fixtures.SPECIAL_TOKENS)
    ids = {t: i for i, t in enumerate(vocab.tokens[:n_normal])}
    merges = [tuple(m.split(" ", 1)) for m in vocab.merges]
    tok = Tokenizer(models.BPE(vocab=ids, merges=merges, byte_fallback=False, ignore_merges=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in make_fixtures.SPECIAL_TOKENS])
    bos = vocab.tokens[vocab.bos_id]
    if fx.shape.add_bos:
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, vocab.bos_id)])
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tok.save(str(out / "tokenizer.json"))
    eos = vocab.tokens[vocab.eos_id]
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": bos if fx.shape.add_bos else None,
        "eos_token": eos,
        "pad_token": vocab.tokens[vocab.pad_id],
        "model_max_length": 2048,
        # llama: the list form transformers writes for several named templates.
        "chat_template": [{"name": "default", "template": template}] if fx.model_type == "llama" else template,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")
    if fx.model_type == "llama":
        generation = {"bos_token_id": vocab.bos_id, "eos_token_id": [vocab.eos_id, vocab.bos_id]}
        (out / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")


def write_config(fx: HfFixture, vocab: make_fixtures.Vocab, out: Path) -> None:
    s = fx.shape
    config = {
        "architectures": ["LlamaForCausalLM" if fx.model_type == "llama" else "Qwen2ForCausalLM"],
        "model_type": fx.model_type,
        "hidden_size": s.n_embd,
        "intermediate_size": s.n_ff,
        "num_hidden_layers": s.n_layer,
        "num_attention_heads": s.n_head,
        "num_key_value_heads": s.n_head_kv,
        "max_position_embeddings": s.n_ctx_train,
        "rms_norm_eps": s.rms_eps,
        "rope_theta": s.rope_base,
        "rope_scaling": None,
        "vocab_size": len(vocab.tokens),
        "tie_word_embeddings": s.tied,
        "hidden_act": "silu",
        "torch_dtype": fx.dtype,
        "bos_token_id": vocab.bos_id,
        "eos_token_id": vocab.eos_id,
    }
    if fx.model_type == "qwen2":
        config.update(use_sliding_window=False, sliding_window=s.n_ctx_train, max_window_layers=s.n_layer)
    else:
        config.update(attention_bias=False, mlp_bias=False, head_dim=s.head_dim)
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")


# Runs in a fresh interpreter: the converter needs its own gguf-py (it puts it first on
# sys.path), not the gguf package make_fixtures.py already imported.
CONVERT = """
import sys
llama_cpp, folder, out, outtype = sys.argv[1:]
sys.path.insert(0, llama_cpp)
sys.argv = ["convert_hf_to_gguf.py", folder, "--outfile", out, "--outtype", outtype]
import convert_hf_to_gguf
from conversion.base import TextModel
TextModel.get_vocab_base_pre = lambda self, tokenizer: "qwen2"
convert_hf_to_gguf.main()
"""


def convert(llama_cpp: Path, fx: HfFixture, folder: Path, out: Path) -> None:
    """llama.cpp's convert_hf_to_gguf.py with the pre-tokenizer hash lookup pinned."""
    outtype = {"float32": "f32", "bfloat16": "bf16"}[fx.dtype]
    cmd = [sys.executable, "-c", CONVERT, str(llama_cpp), str(folder), str(out), outtype]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        sys.stderr.write(done.stdout + done.stderr)
        sys.exit(f"error: converting {folder} failed with {done.returncode}")


def file_table(folder: Path) -> list[str]:
    lines = ["| file | bytes | sha256 |", "|---|---|---|"]
    for path in sorted(folder.iterdir()):
        lines.append(f"| {path.name} | {path.stat().st_size} | `{make_fixtures.sha256(path)}` |")
    return lines + [""]


def internlm2_readme(folder: Path) -> list[str]:
    fx = next(f for f in make_fixtures.INTERNLM2_FIXTURES if f.stem == hf_internlm2.SOURCE_STEM)
    return [
        f"## `{folder.name}/`",
        "",
        f"- model_type `internlm2` (InternLM2ForCausalLM, auto_map), float16 matrices + float32 norms,"
        f" {fx.n_layer} layers, hidden {fx.n_embd}, heads {fx.n_head} / kv heads {fx.n_head_kv}"
        f" (head_dim {fx.head_dim}), intermediate {fx.n_ff}, rope_theta {fx.rope_base:g},"
        f" rms eps {fx.rms_eps:g}, separate `output`, fused `attention.wqkv`",
        f"- the inverse of llama.cpp's InternLM2 converter applied to `{hf_internlm2.SOURCE_STEM}.gguf`"
        " (README-internlm2.md): same numbers, same vocabulary (SentencePiece BPE tokenizer.model,"
        " added tokens as `[UNUSED_TOKEN_n]` pieces renamed by tokenizer_config.json's"
        " added_tokens_decoder); golden: `tests/golden/internlm2-tiny-f16.json` (llama.cpp on that GGUF).",
        "  The folder was not run through convert_hf_to_gguf.py (no torch where it was made); the script"
        " checks numpy transcriptions of the converter's wqkv split and set_vocab rules against the GGUF.",
        "",
    ] + file_table(folder)


def readme(rows: list[tuple[HfFixture, Path]]) -> str:
    lines = [
        "# Hugging Face folder fixtures",
        "",
        "Seeded random-weight models (NOT trained) as Hugging Face folders, each with the GGUF",
        "llama.cpp's convert_hf_to_gguf.py made from it. Generated by `scripts/make_hf_fixture.py`",
        "(regenerate: `.venv/bin/python scripts/make_hf_fixture.py`; needs the",
        "converter's Python requirements). Goldens: `tests/golden/<stem>.json` (llama.cpp on the GGUF).",
        "",
        f"Vocab: make_fixtures.py's trimmed qwen2 vocab with {N_NORMAL} normal tokens + <|endoftext|>,",
        "<|im_start|>, <|im_end|> (ids 1000-1002), as a Qwen2-style tokenizer.json. Chat template:",
        "Qwen2.5-Instruct.",
        "",
    ]
    for fx, folder in rows:
        s = fx.shape
        lines += [
            f"## `{folder.name}/`",
            "",
            f"- model_type `{fx.model_type}`, {fx.dtype}, {s.n_layer} layers, hidden {s.n_embd}, heads {s.n_head} /"
            f" kv heads {s.n_head_kv} (head_dim {s.head_dim}), intermediate {s.n_ff}, rope_theta {s.rope_base:g},"
            f" rms eps {s.rms_eps:g}, {'tied embeddings' if s.tied else 'separate lm_head'},"
            f" add_bos {str(s.add_bos).lower()}, seed {s.seed}, {fx.shards} safetensors file(s)",
            "",
        ] + file_table(folder)
    lines += internlm2_readme(REPO / "tests" / "fixtures" / hf_internlm2.STEM)
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", help="one fixture stem")
    args = ap.parse_args()
    llama_cpp = make_fixtures.vendored_llama_cpp()
    if args.only in (None, hf_internlm2.STEM):
        shutil.rmtree(REPO / "tests" / "fixtures" / hf_internlm2.STEM, ignore_errors=True)
        folder = hf_internlm2.make(REPO, llama_cpp)
        print(f"{folder}: {sum(p.stat().st_size for p in folder.iterdir())} bytes")
    make_fixtures.N_NORMAL = N_NORMAL
    vocab = make_fixtures.trimmed_qwen2_vocab(llama_cpp / "models" / "ggml-vocab-qwen2.gguf")
    template = (llama_cpp / "models" / "templates" / "Qwen-Qwen2.5-7B-Instruct.jinja").read_text()
    rows = []
    for fx in FIXTURES:
        folder = REPO / "tests" / "fixtures" / fx.stem
        rows.append((fx, folder))
        if args.only not in (None, fx.stem):
            continue
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        write_config(fx, vocab, folder)
        write_tokenizer(fx, vocab, template, folder)
        write_weights(fx, len(vocab.tokens), folder)
        gguf_path = folder / f"{fx.stem}.gguf"
        convert(llama_cpp, fx, folder, gguf_path)
        doc = make_golden.golden(gguf_path, str(gguf_path.relative_to(REPO)), FIXTURE_CASES)
        golden = REPO / "tests" / "golden" / f"{fx.stem}.json"
        golden.write_text(make_golden.to_json(doc) + "\n", encoding="utf-8")
        size = sum(p.stat().st_size for p in folder.iterdir())
        print(f"{folder}: {size} bytes; {golden}: {len(doc['cases'])} cases")
        for case in doc["cases"]:
            print(f"  {case['name']:<24} prompt {len(case['prompt_ids']):>4} tokens, min_margin {case['min_margin']:.4f}")
    (REPO / "tests" / "fixtures" / "README-hf.md").write_text(readme(rows))


if __name__ == "__main__":
    main()
