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


if __name__ == "__main__":
    main()
