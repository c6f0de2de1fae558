#!/usr/bin/env python3
"""Seeded random LoRA adapters for the tiny fixtures (tests/fixtures/lora/*.gguf) and
llama.cpp's greedy goldens with each adapter applied (tests/golden/lora-*.json).

An adapter is written as llama.cpp's convert_lora_to_gguf.py writes one: `general.type =
adapter`, `general.architecture` = the base model's, `adapter.type = lora`,
`adapter.lora.alpha`, and for every adapted matrix `<base tensor>.lora_a` (numpy
[rank, in], GGUF ne [in, rank]) and `<base tensor>.lora_b` (numpy [out, rank], GGUF ne
[rank, out]), all F32. llama.cpp applies it as `y = W x + scale * B (A x)` with
`scale = lora_scale * alpha / rank` (src/llama-adapter.cpp, llm_build_lora_mm).

Weights: A ~ N(0, 1/in), B ~ N(0, GAIN² / rank) / scale, so the update's size next to the
base projection's does not depend on rank or alpha (the outputs clearly differ from the
base model's and from each other's).

Goldens: as scripts/make_golden.py makes them (same settings, cases and JSON layout), with
llama-cpp-python's `lora_path` (scale 1.0); each file names the base and the adapter.

Also written, without goldens:
- `smollm2-q-r1.gguf`: a rank-1 update of layer 0's attn_q for the default model
  (SmolLM2-135M, read from .cache/models for its shapes), so the HTTP contract tests can
  load an adapter into the server they run (tests/http_openapi.rs).
- `peft-llama-attn-r8/`: `llama-attn-r8.gguf` as a PEFT folder (`adapter_config.json` +
  `adapter_model.safetensors`, F32) with the SAME numbers, as PEFT would have saved the
  adapter that convert_lora_to_gguf.py turned into that GGUF: Hugging Face names
  (`base_model.model.model.layers.N.self_attn.q_proj.lora_A.weight`, [rank, in]; lora_B
  [out, rank]) and, for q_proj / k_proj, lora_B's rows in Hugging Face's half-split RoPE
  order: the converter permutes a llama's q/k rows into adjacent pairs (LlamaModel.permute
  on lora_B; lora_A is untouched), so the folder holds the inverse permutation.

Usage: scripts/make_lora_fixtures.py [--goldens-only | --no-goldens]
       scripts/make_lora_fixtures.py --bench BASE.gguf --out-dir DIR [--count 4] [--rank 16]
         (random adapters on every projection of any llama/qwen2 GGUF, for bench/: not fixtures)
Needs: gguf-py and numpy (the adapters); llama-cpp-python 0.3.36 and jinja2 (the goldens).
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import gguf
import numpy as np

REPO = Path(__file__).resolve().parent.parent
LORA_DIR = REPO / "tests" / "fixtures" / "lora"
GAIN = 0.8

ATTN = ("attn_q", "attn_k", "attn_v", "attn_output")
FFN = ("ffn_gate", "ffn_up", "ffn_down")


@dataclasses.dataclass(frozen=True)
class Adapter:
    """One adapter file: its base fixture, seed, rank, alpha and the adapted matrices."""

    stem: str
    base: str  # fixture stem in tests/fixtures
    seed: int
    rank: int
    alpha: float
    targets: tuple[str, ...]
    layers: tuple[int, ...] = (0, 1)


ADAPTERS = [
    Adapter("llama-attn-r8", "llama-tiny-f16-mixed", 7001, rank=8, alpha=16.0, targets=ATTN),
    Adapter("llama-mlp-r4", "llama-tiny-f16-mixed", 7002, rank=4, alpha=4.0, targets=FFN),
    # Only layer 1, every matrix, rank 16 (alpha < rank: scale 0.5).
    Adapter("llama-all-r16", "llama-tiny-f16-mixed", 7003, rank=16, alpha=8.0,
            targets=ATTN + FFN, layers=(1,)),
    Adapter("qwen2-qv-r8", "qwen2-tiny-untied-mixed", 7004, rank=8, alpha=8.0,
            targets=("attn_q", "attn_v", "ffn_down")),
]


def base_shapes(base: Path) -> tuple[str, dict[str, tuple[int, int]]]:
    """The base model's architecture and its matrices' [out, in] shapes by name."""
    reader = gguf.GGUFReader(base)
    arch = bytes(reader.fields["general.architecture"].parts[-1]).decode()
    shapes = {}
    for t in reader.tensors:
        if len(t.shape) == 2:
            cols, rows = (int(d) for d in t.shape)  # ne order: [in, out]
            shapes[t.name] = (rows, cols)
    return arch, shapes


def write_adapter(ad: Adapter, base: Path | None = None, out_dir: Path = LORA_DIR) -> Path:
    base = base or REPO / "tests" / "fixtures" / f"{ad.base}.gguf"
    arch, shapes = base_shapes(base)
    rng = np.random.default_rng(ad.seed)
    scale = ad.alpha / ad.rank
    path = out_dir / f"{ad.stem}.gguf"
    writer = gguf.GGUFWriter(path, arch)
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_name(ad.stem)
    writer.add_description(f"tessera test LoRA for {ad.base}: seeded random, not trained")
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, ad.alpha)
    for layer in ad.layers:
        for target in ad.targets:
            name = f"blk.{layer}.{target}.weight"
            out_dim, in_dim = shapes[name]
            a = (rng.standard_normal((ad.rank, in_dim)) / np.sqrt(in_dim)).astype(np.float32)
            b = (rng.standard_normal((out_dim, ad.rank)) * GAIN / np.sqrt(ad.rank) / scale)
            writer.add_tensor(f"{name}.lora_a", a)
            writer.add_tensor(f"{name}.lora_b", b.astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def half_split(b: np.ndarray, heads: int) -> np.ndarray:
    """The inverse of convert_hf_to_gguf's LlamaModel.permute on rows (adjacent RoPE pairs
    back to half-split): permute(w) = w.reshape(heads, 2, d/2, ...).swapaxes(1, 2)."""
    rows = b.shape[0]
    d = rows // heads
    return b.reshape(heads, d // 2, 2, *b.shape[1:]).swapaxes(1, 2).reshape(b.shape)


PEFT_MODULES = {"attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj",
                "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj",
                "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj"}


def write_safetensors(path: Path, tensors: dict[str, np.ndarray]) -> None:
    """F32 tensors as a safetensors file (the format, without the package)."""
    import json

    header, offset, blobs = {}, 0, []
    for name, t in tensors.items():
        data = np.ascontiguousarray(t, dtype="<f4").tobytes()
        header[name] = {"dtype": "F32", "shape": list(t.shape), "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
        blobs.append(data)
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(len(raw).to_bytes(8, "little"))
        f.write(raw)
        for blob in blobs:
            f.write(blob)


def write_peft(ad: Adapter) -> Path:
    """`ad`'s GGUF (already written) as the PEFT folder it was converted from."""
    import json

    base = REPO / "tests" / "fixtures" / f"{ad.base}.gguf"
    reader = gguf.GGUFReader(base)
    heads = int(reader.fields["llama.attention.head_count"].parts[-1][0])
    kv_heads = int(reader.fields["llama.attention.head_count_kv"].parts[-1][0])
    lora = gguf.GGUFReader(LORA_DIR / f"{ad.stem}.gguf")
    tensors = {}
    for t in lora.tensors:
        base_name, half = t.name.rsplit(".", 1)
        _, layer, target, _ = base_name.split(".")
        m = np.array(t.data, dtype=np.float32).reshape([int(d) for d in reversed(t.shape)])
        if half == "lora_b" and target in ("attn_q", "attn_k"):
            m = half_split(m, heads if target == "attn_q" else kv_heads)
        key = "A" if half == "lora_a" else "B"
        tensors[f"base_model.model.model.layers.{layer}.{PEFT_MODULES[target]}.lora_{key}.weight"] = m
    out = LORA_DIR / f"peft-{ad.stem}"
    out.mkdir(parents=True, exist_ok=True)
    write_safetensors(out / "adapter_model.safetensors", dict(sorted(tensors.items())))
    config = {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": ad.base,
        "r": ad.rank, "lora_alpha": ad.alpha, "lora_dropout": 0.0, "bias": "none",
        "fan_in_fan_out": False, "use_rslora": False, "use_dora": False,
        "target_modules": sorted({PEFT_MODULES[t].split(".")[1] for t in ad.targets}),
        "modules_to_save": None, "rank_pattern": {}, "alpha_pattern": {},
    }
    (out / "adapter_config.json").write_text(json.dumps(config, indent=2) + "\n")
    return out


def write_golden(ad: Adapter) -> Path:
    import llama_cpp

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import make_golden
    from golden_prompts import FIXTURE_CASES

    base = REPO / "tests" / "fixtures" / f"{ad.base}.gguf"
    adapter = LORA_DIR / f"{ad.stem}.gguf"
    original = make_golden.load

    def load_with_lora(path: Path, **overrides) -> llama_cpp.Llama:
        return original(path, lora_path=str(adapter), lora_scale=1.0, **overrides)

    make_golden.load = load_with_lora
    try:
        doc = make_golden.golden(base, str(base.relative_to(REPO)), FIXTURE_CASES)
    finally:
        make_golden.load = original
    doc = {
        "model_file": doc["model_file"],
        "model_sha256": doc["model_sha256"],
        "adapter_file": str(adapter.relative_to(REPO)),
        "adapter_sha256": make_golden.sha256(adapter),
        "lora_scale": 1.0,
        **{k: v for k, v in doc.items() if k not in ("model_file", "model_sha256")},
    }
    out = REPO / "tests" / "golden" / f"lora-{ad.stem}.json"
    out.write_text(make_golden.to_json(doc) + "\n", encoding="utf-8")
    for case in doc["cases"]:
        print(f"  {case['name']:<24} min_margin {case['min_margin']:.4f}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--goldens-only", action="store_true")
    ap.add_argument("--no-goldens", action="store_true")
    ap.add_argument("--bench", type=Path, help="base GGUF for bench adapters")
    ap.add_argument("--out-dir", type=Path)
    ap.add_argument("--count", type=int, default=4)
    ap.add_argument("--rank", type=int, default=16)
    args = ap.parse_args()
    if args.bench:
        arch, shapes = base_shapes(args.bench)
        n_layer = 1 + max(int(n.split(".")[1]) for n in shapes if n.startswith("blk."))
        args.out_dir.mkdir(parents=True, exist_ok=True)
        for i in range(args.count):
            ad = Adapter(f"bench-{i}", args.bench.stem, 9000 + i, rank=args.rank,
                         alpha=float(args.rank), targets=ATTN + FFN, layers=tuple(range(n_layer)))
            print(write_adapter(ad, args.bench, args.out_dir))
        return
    LORA_DIR.mkdir(parents=True, exist_ok=True)
    for ad in ADAPTERS:
        if not args.goldens_only:
            print(write_adapter(ad))
        if not args.no_goldens:
            print(write_golden(ad))
    if not args.goldens_only:
        print(write_peft(ADAPTERS[0]))
        default_model = REPO / ".cache" / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
        contract = Adapter("smollm2-q-r1", "SmolLM2-135M-Instruct.Q4_1", 7005, rank=1,
                           alpha=1.0, targets=("attn_q",), layers=(0,))
        print(write_adapter(contract, default_model))


if __name__ == "__main__":
    main()
