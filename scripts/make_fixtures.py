#!/usr/bin/env python3
"""Small random-weight GGUF fixtures that llama.cpp loads (tests/fixtures/*.gguf).

Each fixture is a seeded random model (numpy default_rng) written as an all-F32 GGUF with
gguf-py, then converted by llama.cpp's own `llama-quantize` into the tensor types listed in
FIXTURES (per-tensor types via --tensor-type / --token-embedding-type / --output-tensor-type),
so every quantized block in the fixtures was produced by llama.cpp itself.

Vocabulary (FIXTURES): llama.cpp's ggml-vocab-qwen2.gguf (byte-level BPE, pre-tokenizer
`qwen2`) trimmed to its first N_NORMAL normal tokens (which hold all 256 byte-level symbols,
so every text still tokenizes), the merges whose two sides and result survive, and the three
ChatML special tokens re-numbered right after. Chat template: Qwen2.5-Instruct's, from
llama.cpp's models/templates.

InternLM2 (INTERNLM2_FIXTURES, arch `internlm2`, README-internlm2.md): the vocabulary as
llama.cpp's converter (conversion/internlm.py, InternLM2Model.set_vocab) writes InternLM2-chat's
SentencePiece model: `tokenizer.ggml.model = llama`, pre `default`, scores and token types,
`<unk>` `<s>` `</s>` at 0..2, the 256 `<0xXX>` byte tokens at 3..258, then pieces, and the
chat model's added tokens last (`<|plugin|>` `<|interpreter|>` `<|action_end|>`
`<|action_start|>` `<|im_end|>` `<|im_start|>`, as at 92538..92543). The pieces are the first
N_SPM_NORMAL of llama.cpp's ggml-vocab-llama-spm.gguf (LLaMA's SentencePiece model, the same
layout) plus its single-character pieces for every character of those pieces (`▁` among
them, as in any SentencePiece vocab) and below U+0250; every other character falls back to
byte tokens. As the converter does for every entry of tokenizer_config's
`added_tokens_decoder` (special: true), those tokens get score -1000 and type CONTROL, and eos
is `<|im_end|>` (its chat-model rule); pad `</s>`, add_bos true. Chat template:
INTERNLM2_CHAT_TEMPLATE, InternLM2-chat's own (tokenizer_config.json). The Q8_0 and Q4_0
files are llama-quantize's Q8_0 and `--pure` Q4_0 of the F16 file (the oracles for
`--quantization q8_0` / `q4_0` at load).

Weights are scaled so the residual stream carries comparable token-embedding, attention
and MLP parts (the next token depends on the context, not only on the last token) and the
logits spread wide (std ~sqrt(n_embd): 16 or 11), so greedy top-1/top-2 gaps are
usually large (median ~2-3) next to the drift between valid llama.cpp settings (tests/golden/README.md).

Usage: scripts/make_fixtures.py [--out-dir tests/fixtures] [--llama-quantize PATH]
Needs: gguf 0.19, numpy; llama-quantize (default: built by scripts/build-llama-cpp.sh).
Writes the fixtures and tests/fixtures/README.md (files, dims, tensor types, sha256).
"""
from __future__ import annotations

import argparse
import collections
import dataclasses
import hashlib
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import gguf
import numpy as np

LLAMA_CPP_PYTHON_VERSION = "0.3.36"
N_NORMAL = 2000  # normal (non-special) tokens kept from the qwen2 vocab
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
N_SPM_NORMAL = 1800  # pieces kept from the front of the llama-spm vocab (after the bytes)
# InternLM2-chat's added tokens, in id order (92538..92543 in the real 92544-token vocab).
INTERNLM2_ADDED = ["<|plugin|>", "<|interpreter|>", "<|action_end|>", "<|action_start|>",
                   "<|im_end|>", "<|im_start|>"]
# InternLM2-chat's chat_template (tokenizer_config.json of internlm2-chat-7b / -1_8b).
INTERNLM2_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + "
    "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\n' }}{% endif %}"
)
REPO = Path(__file__).resolve().parent.parent
# Weight gains (std x sqrt(fan_in)); see random_weights.
QK_GAIN = 1.2
O_GAIN = 1.5
DOWN_GAIN = 1.5


@dataclasses.dataclass(frozen=True)
class Fixture:
    """One fixture file: model shape, seed and the llama-quantize call that types it."""

    stem: str
    # "qwen2" (QKV biases, NEOX rope), "llama" (no biases, interleaved rope) or "internlm2"
    # (llama's layer as llama.cpp's converter writes it; no rope.dimension_count / vocab_size)
    arch: str
    seed: int
    n_layer: int
    n_embd: int
    n_head: int
    n_head_kv: int
    head_dim: int
    n_ff: int
    tied: bool  # no output.weight: the output projection reuses token_embd
    rope_base: float
    rms_eps: float
    add_bos: bool
    base_type: str  # llama-quantize ftype argument
    quant_args: tuple[str, ...]  # extra llama-quantize flags (per-tensor types)
    n_ctx_train: int = 2048
    # Quantize this fixture's output file (by stem, made earlier) instead of the F32 master.
    source: str | None = None


FIXTURES = [
    # Shaped like Qwen2.5-0.5B-Instruct-Q4_K_M: tied embeddings, Q4_K_M mixture (Q4_K with
    # Q6_K for token_embd-as-output and for the last layer's attn_v / ffn_down).
    Fixture(
        stem="qwen2-tiny-tied-q4_k_m", arch="qwen2", seed=20240601, n_layer=2, n_embd=256,
        n_head=4, n_head_kv=2, head_dim=64, n_ff=512, tied=True, rope_base=1e6, rms_eps=1e-6,
        add_bos=False, base_type="Q4_K_M", quant_args=(),
    ),
    # Separate output.weight; one 32-block quant type per tensor kind, Q5_K for the output.
    Fixture(
        stem="qwen2-tiny-untied-mixed", arch="qwen2", seed=20240602, n_layer=2, n_embd=256,
        n_head=4, n_head_kv=2, head_dim=64, n_ff=512, tied=False, rope_base=1e6, rms_eps=1e-6,
        add_bos=False, base_type="Q8_0",
        quant_args=(
            "--pure",
            "--token-embedding-type", "q8_0",
            "--output-tensor-type", "q5_k",
            "--tensor-type", "attn_q=q4_0",
            "--tensor-type", "attn_k=q4_1",
            "--tensor-type", "attn_v=q5_0",
            "--tensor-type", "attn_output=q8_0",
            "--tensor-type", "ffn_gate=q4_0",
            "--tensor-type", "ffn_up=q4_1",
            "--tensor-type", "ffn_down=q5_0",
        ),
    ),
    # llama arch (interleaved rope, no biases, add_bos), multi-head (no GQA), mostly F16
    # with an F32 matmul weight, a Q8_0 output and K-quant ffn_down (rows of 256).
    Fixture(
        stem="llama-tiny-f16-mixed", arch="llama", seed=20240603, n_layer=2, n_embd=128,
        n_head=2, n_head_kv=2, head_dim=64, n_ff=256, tied=False, rope_base=1e4, rms_eps=1e-5,
        add_bos=True, base_type="Q8_0",
        quant_args=(
            "--pure",
            "--token-embedding-type", "f16",
            "--output-tensor-type", "q8_0",
            "--tensor-type", "attn_q=f32",
            "--tensor-type", "attn_k=f16",
            "--tensor-type", "attn_v=f16",
            "--tensor-type", "attn_output=f16",
            "--tensor-type", "ffn_gate=f16",
            "--tensor-type", "ffn_up=f16",
            "--tensor-type", r"blk\.0\.ffn_down=q6_k",
            "--tensor-type", r"blk\.1\.ffn_down=q5_k",
        ),
    ),
]


# InternLM2-chat-shaped (GQA 4/2, rope base 1e6, rms eps 1e-5, separate output), on the
# InternLM2 SentencePiece vocab: F32 and F16 straight from the master; Q8_0 and `--pure`
# Q4_0 (every matrix Q4_0) from the F16 file, the oracles for `--quantization` at load.
INTERNLM2_FIXTURES = [
    Fixture(
        stem=f"internlm2-tiny-{ftype.lower()}", arch="internlm2", seed=20240611, n_layer=2,
        n_embd=128, n_head=4, n_head_kv=2, head_dim=32, n_ff=352, tied=False, rope_base=1e6,
        rms_eps=1e-5, add_bos=True, base_type=ftype, quant_args=("--pure",) if ftype == "Q4_0" else (),
        source="internlm2-tiny-f16" if ftype in ("Q8_0", "Q4_0") else None,
    )
    for ftype in ("F32", "F16", "Q8_0", "Q4_0")
]


@dataclasses.dataclass
class Vocab:
    tokens: list[str]
    token_types: list[int]
    merges: list[str]
    bos_id: int
    eos_id: int
    eot_id: int | None
    pad_id: int
    model: str = "gpt2"  # tokenizer.ggml.model
    pre: str = "qwen2"
    scores: list[float] | None = None  # SentencePiece only
    unk_id: int | None = None
    add_space_prefix: bool | None = None


def cache_dir() -> Path:
    return Path(os.environ.get("TESSERA_CACHE_DIR", REPO / ".cache"))


def vendored_llama_cpp() -> Path:
    path = cache_dir() / "dl" / f"llama_cpp_python-{LLAMA_CPP_PYTHON_VERSION}" / "vendor" / "llama.cpp"
    if not (path / "models" / "ggml-vocab-qwen2.gguf").is_file():
        sys.exit(f"error: {path} missing; run scripts/build-llama-cpp.sh first (it unpacks the sdist)")
    return path


def gpt2_byte_symbols() -> set[str]:
    """The 256 single-character symbols that byte-level BPE maps bytes 0..255 to."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAC + 1)) + list(range(0xAE, 0xFF + 1))
    symbols = [chr(b) for b in printable]
    extra = 0
    for b in range(256):
        if b not in printable:
            symbols.append(chr(256 + extra))
            extra += 1
    return set(symbols)


def trimmed_qwen2_vocab(src: Path) -> Vocab:
    """First N_NORMAL normal tokens + merges closed over them + ChatML specials after them."""
    reader = gguf.GGUFReader(src)
    tokens = reader.fields["tokenizer.ggml.tokens"].contents()
    types = reader.fields["tokenizer.ggml.token_type"].contents()
    merges = reader.fields["tokenizer.ggml.merges"].contents()
    normal = int(gguf.TokenType.NORMAL)
    if any(t != normal for t in types[:N_NORMAL]):
        sys.exit("error: the first N_NORMAL qwen2 tokens are not all normal tokens")
    kept = tokens[:N_NORMAL]
    kept_set = set(kept)
    missing = gpt2_byte_symbols() - kept_set
    if missing:
        sys.exit(f"error: trimmed vocab lacks {len(missing)} byte-level symbols, e.g. {sorted(missing)[:5]}")
    kept_merges = []
    for merge in merges:
        left, right = merge.split(" ", 1)
        if left in kept_set and right in kept_set and left + right in kept_set:
            kept_merges.append(merge)
    for special in SPECIAL_TOKENS:
        if special not in tokens:
            sys.exit(f"error: {special} not in {src}")
    ids = {s: N_NORMAL + i for i, s in enumerate(SPECIAL_TOKENS)}
    return Vocab(
        tokens=list(kept) + SPECIAL_TOKENS,
        token_types=[normal] * N_NORMAL + [int(gguf.TokenType.CONTROL)] * len(SPECIAL_TOKENS),
        merges=kept_merges,
        bos_id=ids["<|endoftext|>"],
        eos_id=ids["<|im_end|>"],
        eot_id=ids["<|im_end|>"],
        pad_id=ids["<|endoftext|>"],
    )


def internlm2_vocab(src: Path) -> Vocab:
    """InternLM2-chat's vocabulary layout over pieces of llama.cpp's llama-spm vocab (see
    the module docstring): <unk> <s> </s>, 256 byte tokens, pieces, the added tokens."""
    reader = gguf.GGUFReader(src)
    tokens = reader.fields["tokenizer.ggml.tokens"].contents()
    scores = reader.fields["tokenizer.ggml.scores"].contents()
    types = reader.fields["tokenizer.ggml.token_type"].contents()
    if tokens[:3] != ["<unk>", "<s>", "</s>"] or tokens[3] != "<0x00>" or tokens[258] != "<0xFF>":
        sys.exit(f"error: {src} does not start with <unk> <s> </s> <0x00>..<0xFF>")
    normal = int(gguf.TokenType.NORMAL)
    head = list(range(259 + N_SPM_NORMAL))
    # A real SentencePiece vocab holds every character of its pieces as a piece itself
    # (`▁` included); keep those, and the Latin ones.
    used = {c for i in head[259:] for c in tokens[i]}
    chars = [i for i in range(259 + N_SPM_NORMAL, len(tokens))
             if types[i] == normal and len(tokens[i]) == 1
             and (ord(tokens[i]) < 0x250 or tokens[i] in used)]
    kept = head + chars
    out_tokens = [tokens[i] for i in kept] + INTERNLM2_ADDED
    out_scores = [float(scores[i]) for i in kept] + [0.0] * len(INTERNLM2_ADDED)
    out_types = [int(types[i]) for i in kept] + [int(gguf.TokenType.USER_DEFINED)] * len(INTERNLM2_ADDED)
    # The converter's added_tokens_decoder rule: score -1000, CONTROL when special.
    for i, tok in enumerate(out_tokens):
        if tok in ("<unk>", "<s>", "</s>") or tok in INTERNLM2_ADDED:
            out_scores[i] = -1000.0
            out_types[i] = int(gguf.TokenType.CONTROL)
    ids = {t: i for i, t in enumerate(out_tokens)}
    return Vocab(
        tokens=out_tokens, token_types=out_types, merges=[], bos_id=ids["<s>"],
        eos_id=ids["<|im_end|>"], eot_id=None, pad_id=ids["</s>"], model="llama", pre="default",
        scores=out_scores, unk_id=ids["<unk>"], add_space_prefix=True,
    )


def random_weights(fx: Fixture, n_vocab: int) -> dict[str, np.ndarray]:
    """Seeded weights; numpy shape [rows, cols] = GGUF ne reversed ([out, in] for matmuls)."""
    rng = np.random.default_rng(fx.seed)

    def normal(shape: tuple[int, ...], std: float) -> np.ndarray:
        return (rng.standard_normal(shape) * std).astype(np.float32)

    def norm_weight(random_sign: bool = False) -> np.ndarray:
        magnitude = 1.0 + rng.standard_normal(fx.n_embd) * 0.1
        sign = rng.choice([-1.0, 1.0], fx.n_embd) if random_sign else 1.0
        return (magnitude * sign).astype(np.float32)

    d, q_dim, kv_dim = fx.n_embd, fx.n_head * fx.head_dim, fx.n_head_kv * fx.head_dim
    w: dict[str, np.ndarray] = {}
    # token_embd [n_vocab, n_embd]: unit-variance rows; as tied output, logits std ~sqrt(d).
    w["token_embd.weight"] = normal((n_vocab, d), 1.0)
    for i in range(fx.n_layer):
        p = f"blk.{i}."
        w[p + "attn_norm.weight"] = norm_weight()
        w[p + "attn_q.weight"] = normal((q_dim, d), QK_GAIN / np.sqrt(d))
        w[p + "attn_k.weight"] = normal((kv_dim, d), QK_GAIN / np.sqrt(d))
        w[p + "attn_v.weight"] = normal((kv_dim, d), 1.0 / np.sqrt(d))
        w[p + "attn_output.weight"] = normal((d, q_dim), O_GAIN / np.sqrt(q_dim))
        if fx.arch == "qwen2":
            w[p + "attn_q.bias"] = normal((q_dim,), 0.3)
            w[p + "attn_k.bias"] = normal((kv_dim,), 0.3)
            w[p + "attn_v.bias"] = normal((kv_dim,), 0.1)
        w[p + "ffn_norm.weight"] = norm_weight()
        w[p + "ffn_gate.weight"] = normal((fx.n_ff, d), 1.0 / np.sqrt(d))
        w[p + "ffn_up.weight"] = normal((fx.n_ff, d), 1.0 / np.sqrt(d))
        w[p + "ffn_down.weight"] = normal((d, fx.n_ff), DOWN_GAIN / np.sqrt(fx.n_ff))
    # Random signs: with tied embeddings, e_t . (g * e_t) would otherwise make the current
    # token by far the top logit (the model would just repeat its input).
    w["output_norm.weight"] = norm_weight(random_sign=True)
    if not fx.tied:
        w["output.weight"] = normal((n_vocab, d), 1.0)  # output [n_vocab, n_embd]
    return w


def write_f32_master(fx: Fixture, vocab: Vocab, chat_template: str, path: Path) -> None:
    writer = gguf.GGUFWriter(path, fx.arch)
    writer.add_name(fx.stem)
    writer.add_description("tessera test fixture: seeded random weights, not a trained model")
    writer.add_context_length(fx.n_ctx_train)
    writer.add_embedding_length(fx.n_embd)
    writer.add_block_count(fx.n_layer)
    writer.add_feed_forward_length(fx.n_ff)
    writer.add_head_count(fx.n_head)
    writer.add_head_count_kv(fx.n_head_kv)
    writer.add_rope_freq_base(fx.rope_base)
    writer.add_layer_norm_rms_eps(fx.rms_eps)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    if fx.arch == "llama":
        writer.add_rope_dimension_count(fx.head_dim)
        writer.add_vocab_size(len(vocab.tokens))
    finish_gguf(writer, vocab, fx.add_bos, chat_template, random_weights(fx, len(vocab.tokens)))


def finish_gguf(writer: gguf.GGUFWriter, vocab: Vocab, add_bos: bool, chat_template: str,
                tensors: dict[str, np.ndarray]) -> None:
    """Writes the tokenizer metadata (`vocab`, `chat_template`) and `tensors`, then the
    whole file."""
    writer.add_tokenizer_model(vocab.model)
    writer.add_tokenizer_pre(vocab.pre)
    writer.add_token_list(vocab.tokens)
    if vocab.scores is not None:
        writer.add_token_scores(vocab.scores)
    writer.add_token_types(vocab.token_types)
    if vocab.add_space_prefix is not None:
        writer.add_add_space_prefix(vocab.add_space_prefix)
    if vocab.merges:
        writer.add_token_merges(vocab.merges)
    writer.add_bos_token_id(vocab.bos_id)
    writer.add_eos_token_id(vocab.eos_id)
    if vocab.unk_id is not None:
        writer.add_unk_token_id(vocab.unk_id)
    if vocab.eot_id is not None:
        writer.add_eot_token_id(vocab.eot_id)
    writer.add_pad_token_id(vocab.pad_id)
    writer.add_add_bos_token(add_bos)
    if vocab.model == "llama":
        writer.add_add_eos_token(False)
    writer.add_chat_template(chat_template)
    for name, tensor in tensors.items():
        writer.add_tensor(name, tensor)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def find_llama_quantize(explicit: str | None) -> Path:
    if explicit:
        return Path(explicit)
    out = subprocess.run(
        [str(REPO / "scripts" / "build-llama-cpp.sh")], check=True, capture_output=True, text=True
    ).stdout.split()
    for line in out:
        if line.endswith("/llama-quantize"):
            return Path(line)
    sys.exit("error: scripts/build-llama-cpp.sh printed no llama-quantize path")


def quantize(llama_quantize: Path, fx: Fixture, master: Path, out: Path) -> None:
    cmd = [str(llama_quantize), *fx.quant_args, str(master), str(out), fx.base_type, "1"]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        sys.stderr.write(done.stdout + done.stderr)
        sys.exit(f"error: {' '.join(cmd)} failed with {done.returncode}")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def tensor_types(path: Path) -> tuple[collections.Counter, list[tuple[str, str]]]:
    reader = gguf.GGUFReader(path)
    pairs = [(t.name, t.tensor_type.name) for t in reader.tensors]
    return collections.Counter(ty for _, ty in pairs), pairs


def readme(rows: list[tuple[Fixture, Path]], vocab: Vocab, vocab_lines: list[str] | None = None,
           title: str = "GGUF test fixtures") -> str:
    lines = [
        f"# {title}",
        "",
        "Seeded random-weight models (NOT trained: their text is gibberish) that llama.cpp loads.",
        "Generated by `scripts/make_fixtures.py` (regenerate: `scripts/build-llama-cpp.sh &&",
        ".venv/bin/python scripts/make_fixtures.py`, or any Python with gguf 0.19 + numpy).",
        "Reference outputs for them are in `tests/golden/<stem>.json` (`scripts/make_golden.py`).",
        "",
    ]
    lines += vocab_lines if vocab_lines is not None else [
        f"Vocab (all files): llama.cpp's ggml-vocab-qwen2.gguf trimmed to {N_NORMAL} normal tokens",
        f"(ids 0..{N_NORMAL - 1}, all 256 byte-level symbols included) + {len(vocab.merges)} merges +",
        f"`<|endoftext|>`={vocab.bos_id}, `<|im_start|>`={vocab.bos_id + 1}, `<|im_end|>`={vocab.eos_id}"
        f" (n_vocab {len(vocab.tokens)}); pre-tokenizer `qwen2`;",
        f"bos={vocab.bos_id} eos={vocab.eos_id} eot={vocab.eot_id} pad={vocab.pad_id};"
        " chat template: Qwen2.5-Instruct.",
        "",
    ]
    for fx, path in rows:
        counts, pairs = tensor_types(path)
        lines += [
            f"## `{path.name}`",
            "",
            f"- arch `{fx.arch}`, {fx.n_layer} layers, n_embd {fx.n_embd}, heads {fx.n_head} / kv heads"
            f" {fx.n_head_kv}, head_dim {fx.head_dim}, n_ff {fx.n_ff}, context {fx.n_ctx_train},"
            f" rope base {fx.rope_base:g}, rms eps {fx.rms_eps:g}, add_bos {str(fx.add_bos).lower()},"
            f" {'tied embeddings (no output.weight)' if fx.tied else 'separate output.weight'}",
            f"- seed {fx.seed}; `llama-quantize {' '.join([*fx.quant_args, 'IN', 'OUT', fx.base_type])}`"
            + (f" (IN = `{fx.source}.gguf`)" if fx.source else ""),
            f"- size {path.stat().st_size} bytes, sha256 `{sha256(path)}`",
            "- tensor types: " + ", ".join(f"{ty} x{n}" for ty, n in sorted(counts.items())),
            "",
            "| tensor | type |",
            "|---|---|",
        ]
        lines += [f"| {name} | {ty} |" for name, ty in pairs if not name.endswith("norm.weight")]
        lines += ["| *norm.weight (all) | F32 |", ""]
    return "\n".join(lines)


def vocab_readme_line(vocab: Vocab) -> list[str]:
    """The README's vocabulary paragraph for the InternLM2 fixtures."""
    specials = ", ".join(f"`{vocab.tokens[i]}`={i}" for i, ty in enumerate(vocab.token_types)
                         if ty == int(gguf.TokenType.CONTROL))
    return [
        f"Vocab (all files): InternLM2-chat's layout (`tokenizer.ggml.model` llama, pre `default`,"
        f" add_space_prefix true): `<unk>` `<s>` `</s>`, 256 byte tokens, llama.cpp's"
        f" ggml-vocab-llama-spm.gguf pieces (the first {N_SPM_NORMAL} + the single characters of"
        f" those and below U+0250), then InternLM2-chat's added tokens (n_vocab {len(vocab.tokens)});",
        f"CONTROL tokens (score -1000): {specials};",
        f"bos={vocab.bos_id} eos={vocab.eos_id} unk={vocab.unk_id} pad={vocab.pad_id}; add_bos true;"
        " chat template: InternLM2-chat's (`INTERNLM2_CHAT_TEMPLATE` in the script).",
        "",
    ]


def make_group(fixtures: list[Fixture], vocab: Vocab, chat_template: str, llama_quantize: Path,
               out_dir: Path) -> list[tuple[Fixture, Path]]:
    """Writes each fixture: its F32 master quantized by llama-quantize (or, with `source`,
    an earlier fixture's file quantized again)."""
    rows: list[tuple[Fixture, Path]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for fx in fixtures:
            if fx.source is not None:
                master = out_dir / f"{fx.source}.gguf"
            else:
                master = Path(tmp) / f"{fx.stem}.f32.gguf"
                write_f32_master(fx, vocab, chat_template, master)
            out = out_dir / f"{fx.stem}.gguf"
            quantize(llama_quantize, fx, master, out)
            rows.append((fx, out))
            print(f"{out} {out.stat().st_size} bytes sha256 {sha256(out)}")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out-dir", default=str(REPO / "tests" / "fixtures"))
    ap.add_argument("--llama-quantize", help="path to llama-quantize (default: scripts/build-llama-cpp.sh)")
    ap.add_argument("--only", choices=["qwen2-vocab", "internlm2"],
                    help="write one group: FIXTURES (README.md) or INTERNLM2_FIXTURES (README-internlm2.md)")
    args = ap.parse_args()
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    llama_cpp = vendored_llama_cpp()
    llama_quantize = find_llama_quantize(args.llama_quantize)
    if args.only in (None, "qwen2-vocab"):
        vocab = trimmed_qwen2_vocab(llama_cpp / "models" / "ggml-vocab-qwen2.gguf")
        chat_template = (llama_cpp / "models" / "templates" / "Qwen-Qwen2.5-7B-Instruct.jinja").read_text()
        rows = make_group(FIXTURES, vocab, chat_template, llama_quantize, out_dir)
        (out_dir / "README.md").write_text(readme(rows, vocab))
    if args.only in (None, "internlm2"):
        vocab = internlm2_vocab(llama_cpp / "models" / "ggml-vocab-llama-spm.gguf")
        rows = make_group(INTERNLM2_FIXTURES, vocab, INTERNLM2_CHAT_TEMPLATE, llama_quantize, out_dir)
        text = readme(rows, vocab, vocab_lines=vocab_readme_line(vocab), title="InternLM2 GGUF test fixtures")
        (out_dir / "README-internlm2.md").write_text(text)


if __name__ == "__main__":
    main()
