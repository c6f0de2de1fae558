#!/usr/bin/env python3
"""Tiny mixture-of-experts GGUF fixtures and their llama.cpp goldens.

Writes, for each fixture in FIXTURES:
  tests/fixtures/<stem>.gguf   seeded random MoE model (8 experts, top-2), F32 or Q8_0
  tests/golden/<stem>.json     llama.cpp greedy goldens in make_golden.py's format (the
                               FIXTURE_CASES prompts, 32 tokens, single-token path), plus
                               each case's full first-step logits (`first_logits`)
and tests/fixtures/README-moe.md (files, shapes, tensor types, sha256).

Two layouts, as llama.cpp reads them (vendor/llama.cpp/src/models/{llama,qwen2moe}.cpp):
  llama     Mixtral: `ffn_gate_inp` router + `ffn_{gate,up,down}_exps` 3-D expert tensors
            (GGUF ne [n_embd, n_ff, n_expert] / [n_ff, n_embd, n_expert]); top-k weights
            renormalized.
  qwen2moe  the same routed experts (width `expert_feed_forward_length`, NOT renormalized)
            plus a shared expert `ffn_{gate,up,down}_shexp` gated by
            sigmoid(x . `ffn_gate_inp_shexp`); Q/K/V biases.

Weights follow scripts/make_fixtures.py (same trimmed qwen2 vocab, same gains): seeded
numpy normals, written as an all-F32 GGUF by gguf-py; the Q8_0 files are made from it by
llama.cpp's own `llama-quantize --pure` (it keeps the router `ffn_gate_inp` and 1-D
tensors in F32). Router gain ROUTER_GAIN spreads the router logits (std ~1.5) so routing
is decisive, not a coin toss between near-equal experts.

Usage: scripts/make_moe_fixtures.py [--llama-quantize PATH] [--only STEM] [--no-golden]
Needs: gguf 0.19, numpy, llama-cpp-python 0.3.36 (for goldens) — .venv has them;
llama-quantize from scripts/build-llama-cpp.sh.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
from pathlib import Path

import gguf
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_fixtures as mf  # noqa: E402

REPO = mf.REPO
ROUTER_GAIN = 1.5
SHEXP_GATE_GAIN = 1.0
N_FIRST_LOGITS_DECIMALS = 6


@dataclasses.dataclass(frozen=True)
class MoeFixture:
    stem: str
    arch: str  # "llama" (Mixtral layout) or "qwen2moe"
    seed: int
    n_layer: int
    n_embd: int
    n_head: int
    n_head_kv: int
    head_dim: int
    n_expert: int
    n_expert_used: int
    n_ff_exp: int  # routed expert width (llama: feed_forward_length)
    n_ff_shexp: int  # shared expert width (qwen2moe only)
    rope_base: float
    rms_eps: float
    add_bos: bool
    quant: str | None  # None: the F32 master as is; else a llama-quantize ftype


def _llama(stem: str, seed: int, quant: str | None, n_embd: int) -> MoeFixture:
    return MoeFixture(
        stem=stem, arch="llama", seed=seed, n_layer=3, n_embd=n_embd, n_head=2, n_head_kv=1,
        head_dim=n_embd // 2, n_expert=8, n_expert_used=2, n_ff_exp=n_embd, n_ff_shexp=0, rope_base=1e4,
        rms_eps=1e-5, add_bos=True, quant=quant,
    )


def _qwen2moe(stem: str, seed: int, quant: str | None, n_embd: int) -> MoeFixture:
    return MoeFixture(
        stem=stem, arch="qwen2moe", seed=seed, n_layer=2, n_embd=n_embd, n_head=2, n_head_kv=2,
        head_dim=n_embd // 2, n_expert=8, n_expert_used=2, n_ff_exp=n_embd // 2, n_ff_shexp=n_embd,
        rope_base=1e6,
        rms_eps=1e-6, add_bos=False, quant=quant,
    )


# F32 files at n_embd 64 (their size is all weights at 4 bytes), Q8_0 ones at 128.
FIXTURES = [
    _llama("mixtral-tiny-moe-f32", 20240611, None, 64),
    _llama("mixtral-tiny-moe-q8_0", 20240612, "Q8_0", 128),
    _qwen2moe("qwen2moe-tiny-f32", 20240613, None, 64),
    _qwen2moe("qwen2moe-tiny-q8_0", 20240614, "Q8_0", 128),
]


def random_weights(fx: MoeFixture, n_vocab: int) -> dict[str, np.ndarray]:
    """Seeded weights; numpy shape = GGUF ne reversed ([n_expert, out, in] for experts)."""
    rng = np.random.default_rng(fx.seed)

    def normal(shape: tuple[int, ...], std: float) -> np.ndarray:
        return (rng.standard_normal(shape) * std).astype(np.float32)

    def norm_weight(random_sign: bool = False) -> np.ndarray:
        magnitude = 1.0 + rng.standard_normal(fx.n_embd) * 0.1
        sign = rng.choice([-1.0, 1.0], fx.n_embd) if random_sign else 1.0
        return (magnitude * sign).astype(np.float32)

    d, q_dim, kv_dim = fx.n_embd, fx.n_head * fx.head_dim, fx.n_head_kv * fx.head_dim
    e, f = fx.n_expert, fx.n_ff_exp
    w: dict[str, np.ndarray] = {"token_embd.weight": normal((n_vocab, d), 1.0)}
    for i in range(fx.n_layer):
        p = f"blk.{i}."
        w[p + "attn_norm.weight"] = norm_weight()
        w[p + "attn_q.weight"] = normal((q_dim, d), mf.QK_GAIN / np.sqrt(d))
        w[p + "attn_k.weight"] = normal((kv_dim, d), mf.QK_GAIN / np.sqrt(d))
        w[p + "attn_v.weight"] = normal((kv_dim, d), 1.0 / np.sqrt(d))
        w[p + "attn_output.weight"] = normal((d, q_dim), mf.O_GAIN / np.sqrt(q_dim))
        if fx.arch == "qwen2moe":
            w[p + "attn_q.bias"] = normal((q_dim,), 0.3)
            w[p + "attn_k.bias"] = normal((kv_dim,), 0.3)
            w[p + "attn_v.bias"] = normal((kv_dim,), 0.1)
        w[p + "ffn_norm.weight"] = norm_weight()
        w[p + "ffn_gate_inp.weight"] = normal((e, d), ROUTER_GAIN / np.sqrt(d))
        w[p + "ffn_gate_exps.weight"] = normal((e, f, d), 1.0 / np.sqrt(d))
        w[p + "ffn_up_exps.weight"] = normal((e, f, d), 1.0 / np.sqrt(d))
        w[p + "ffn_down_exps.weight"] = normal((e, d, f), mf.DOWN_GAIN / np.sqrt(f))
        if fx.arch == "qwen2moe":
            s = fx.n_ff_shexp
            w[p + "ffn_gate_inp_shexp.weight"] = normal((d,), SHEXP_GATE_GAIN / np.sqrt(d))
            w[p + "ffn_gate_shexp.weight"] = normal((s, d), 1.0 / np.sqrt(d))
            w[p + "ffn_up_shexp.weight"] = normal((s, d), 1.0 / np.sqrt(d))
            w[p + "ffn_down_shexp.weight"] = normal((d, s), mf.DOWN_GAIN / np.sqrt(s))
    w["output_norm.weight"] = norm_weight(random_sign=True)
    w["output.weight"] = normal((n_vocab, d), 1.0)
    return w


def write_f32(fx: MoeFixture, vocab: mf.Vocab, chat_template: str, path: Path) -> None:
    writer = gguf.GGUFWriter(path, fx.arch)
    writer.add_name(fx.stem)
    writer.add_description("tessera MoE test fixture: seeded random weights, not a trained model")
    writer.add_context_length(2048)
    writer.add_embedding_length(fx.n_embd)
    writer.add_block_count(fx.n_layer)
    # llama: the expert width; qwen2moe: the dense width llama.cpp falls back to.
    writer.add_feed_forward_length(fx.n_ff_exp if fx.arch == "llama" else fx.n_ff_shexp)
    writer.add_head_count(fx.n_head)
    writer.add_head_count_kv(fx.n_head_kv)
    writer.add_rope_freq_base(fx.rope_base)
    writer.add_layer_norm_rms_eps(fx.rms_eps)
    writer.add_expert_count(fx.n_expert)
    writer.add_expert_used_count(fx.n_expert_used)
    if fx.arch == "qwen2moe":
        writer.add_expert_feed_forward_length(fx.n_ff_exp)
        writer.add_expert_shared_feed_forward_length(fx.n_ff_shexp)
    else:
        writer.add_rope_dimension_count(fx.head_dim)
        writer.add_vocab_size(len(vocab.tokens))
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    mf.finish_gguf(writer, vocab, fx.add_bos, chat_template, random_weights(fx, len(vocab.tokens)))


def make_fixture(fx: MoeFixture, vocab: mf.Vocab, template: str, quantizer: Path | None, tmp: Path) -> Path:
    out = REPO / "tests" / "fixtures" / f"{fx.stem}.gguf"
    if fx.quant is None:
        write_f32(fx, vocab, template, out)
        return out
    master = tmp / f"{fx.stem}.f32.gguf"
    write_f32(fx, vocab, template, master)
    if quantizer is None:
        quantizer = mf.find_llama_quantize(None)
    mf.quantize(quantizer, _as_dense_fixture(fx, fx.quant), master, out)
    return out


def _as_dense_fixture(fx: MoeFixture, ftype: str) -> mf.Fixture:
    """make_fixtures.quantize() only reads base_type and quant_args."""
    return mf.Fixture(
        stem=fx.stem, arch=fx.arch, seed=fx.seed, n_layer=fx.n_layer, n_embd=fx.n_embd,
        n_head=fx.n_head, n_head_kv=fx.n_head_kv, head_dim=fx.head_dim, n_ff=fx.n_ff_exp,
        tied=False, rope_base=fx.rope_base, rms_eps=fx.rms_eps, add_bos=fx.add_bos,
        base_type=ftype, quant_args=("--pure",),
    )


def make_golden(path: Path) -> None:
    import make_golden as mg  # needs llama_cpp; imported only when goldens are made

    doc = mg.golden(path, str(path.relative_to(REPO)), mg.FIXTURE_CASES)
    llm = mg.load(path)
    for case in doc["cases"]:
        llm.reset()
        llm.eval(case["prompt_ids"])
        logits = mg.last_logits(llm)
        case["first_logits"] = [round(float(v), N_FIRST_LOGITS_DECIMALS) for v in logits]
    del llm
    out = REPO / "tests" / "golden" / f"{path.stem}.json"
    out.write_text(mg.to_json(doc) + "\n", encoding="utf-8")
    print(f"{out}: " + ", ".join(f"{c['name']} margin {c['min_margin']:.3f}" for c in doc["cases"]))


def readme(rows: list[tuple[MoeFixture, Path]]) -> str:
    lines = [
        "# MoE GGUF test fixtures",
        "",
        "Seeded random-weight mixture-of-experts models (NOT trained) that llama.cpp loads, made by",
        "`scripts/make_moe_fixtures.py` (regenerate: `scripts/build-llama-cpp.sh &&",
        ".venv/bin/python scripts/make_moe_fixtures.py`). Vocab and chat template as in",
        "README.md (trimmed qwen2 vocab, 2003 tokens). Goldens: `tests/golden/<stem>.json`.",
        "",
    ]
    for fx, path in rows:
        counts, pairs = mf.tensor_types(path)
        shexp = f", shared expert width {fx.n_ff_shexp}" if fx.arch == "qwen2moe" else ""
        lines += [
            f"## `{path.name}`",
            "",
            f"- arch `{fx.arch}`, {fx.n_layer} layers, n_embd {fx.n_embd}, heads {fx.n_head} / kv heads"
            f" {fx.n_head_kv}, head_dim {fx.head_dim}, {fx.n_expert} experts, top-{fx.n_expert_used},"
            f" expert width {fx.n_ff_exp}{shexp}, rope base {fx.rope_base:g}, rms eps {fx.rms_eps:g},"
            f" add_bos {str(fx.add_bos).lower()}",
            f"- seed {fx.seed}; " + ("F32 as written by gguf-py" if fx.quant is None
                                     else f"`llama-quantize --pure IN OUT {fx.quant}`"),
            f"- size {path.stat().st_size} bytes, sha256 `{mf.sha256(path)}`",
            "- tensor types: " + ", ".join(f"{ty} x{n}" for ty, n in sorted(counts.items())),
            "- blk.0: " + ", ".join(f"{n.split('.', 2)[2]} {ty}" for n, ty in pairs if n.startswith("blk.0.")),
            "",
        ]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--llama-quantize", help="path to llama-quantize (default: scripts/build-llama-cpp.sh)")
    ap.add_argument("--only", help="one fixture stem")
    ap.add_argument("--no-golden", action="store_true", help="write the GGUFs only")
    args = ap.parse_args()
    llama_cpp = mf.vendored_llama_cpp()
    vocab = mf.trimmed_qwen2_vocab(llama_cpp / "models" / "ggml-vocab-qwen2.gguf")
    template = (llama_cpp / "models" / "templates" / "Qwen-Qwen2.5-7B-Instruct.jinja").read_text()
    quantizer = Path(args.llama_quantize) if args.llama_quantize else None
    chosen = [fx for fx in FIXTURES if args.only in (None, fx.stem)]
    if not chosen:
        sys.exit(f"error: no fixture {args.only!r}; have {[fx.stem for fx in FIXTURES]}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for fx in chosen:
            path = make_fixture(fx, vocab, template, quantizer, Path(tmp))
            print(f"{path} {path.stat().st_size} bytes sha256 {mf.sha256(path)}")
            rows.append((fx, path))
            if not args.no_golden:
                make_golden(path)
    if args.only is None:
        (REPO / "tests" / "fixtures" / "README-moe.md").write_text(readme(rows))


if __name__ == "__main__":
    main()
