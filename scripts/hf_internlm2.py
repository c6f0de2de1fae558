"""The InternLM2 Hugging Face folder fixture (tests/fixtures/hf-internlm2-tiny-f16/), made by
inverting llama.cpp's converter (conversion/internlm.py, InternLM2Model) on
tests/fixtures/internlm2-tiny-f16.gguf; see make_hf_fixture.py's docstring.

Each inversion is checked by running a numpy transcription of the converter's forward rule on
the result and comparing with the GGUF: `split_wqkv` (modify_tensors) and `converter_vocab`
(set_vocab, through sentencepiece's SentencePieceProcessor).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import gguf
import numpy as np

import make_fixtures

SOURCE_STEM = "internlm2-tiny-f16"
STEM = "hf-internlm2-tiny-f16"
# The pieces InternLM2-chat's tokenizer.model holds at the ids its tokenizer_config.json names
# <|plugin|> ... <|im_start|> (92538..92543 in the real vocab).
UNUSED_BASE = 141
AUTO_MAP = {
    "AutoConfig": "configuration_internlm2.InternLM2Config",
    "AutoModel": "modeling_internlm2.InternLM2ForCausalLM",
    "AutoModelForCausalLM": "modeling_internlm2.InternLM2ForCausalLM",
}
GGUF_TO_INTERNLM2 = {
    "attn_norm.weight": "attention_norm.weight",
    "attn_output.weight": "attention.wo.weight",
    "ffn_norm.weight": "ffn_norm.weight",
    "ffn_gate.weight": "feed_forward.w1.weight",
    "ffn_up.weight": "feed_forward.w3.weight",
    "ffn_down.weight": "feed_forward.w2.weight",
}


def llama_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """LlamaModel.permute (half-split -> adjacent RoPE pairs)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def llama_unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def fuse_wqkv(q: np.ndarray, k: np.ndarray, v: np.ndarray, n_head: int, n_kv: int) -> np.ndarray:
    hd, n = q.shape[0] // n_head, q.shape[1]
    q = llama_unpermute(q, n_head).reshape(n_kv, n_head // n_kv, hd, n)
    k = llama_unpermute(k, n_kv).reshape(n_kv, 1, hd, n)
    return np.concatenate([q, k, v.reshape(n_kv, 1, hd, n)], axis=1).reshape(-1, n)


def split_wqkv(qkv: np.ndarray, n_head: int, n_kv: int) -> tuple[np.ndarray, ...]:
    """InternLM2Model.modify_tensors, transcribed to numpy."""
    n_embd = qkv.shape[1]
    q_per_kv, head_dim = n_head // n_kv, n_embd // n_head
    qkv = qkv.reshape((n_kv, q_per_kv + 2, head_dim, n_embd))
    q, k, v = qkv[:, :q_per_kv], qkv[:, -2], qkv[:, -1]
    q = llama_permute(q.reshape((-1, q.shape[-1])), n_head)
    k = llama_permute(k.reshape((-1, k.shape[-1])), n_kv)
    return q, k, v.reshape((-1, v.shape[-1]))


def weights(reader: gguf.GGUFReader, n_head: int, n_kv: int) -> dict[str, np.ndarray]:
    t = {x.name: np.array(x.data) for x in reader.tensors}
    out = {
        "model.tok_embeddings.weight": t["token_embd.weight"],
        "model.norm.weight": t["output_norm.weight"],
        "output.weight": t["output.weight"],
    }
    n_layer = 1 + max(int(name.split(".")[1]) for name in t if name.startswith("blk."))
    for i in range(n_layer):
        blk = {key: t[f"blk.{i}.{key}"] for key in ("attn_q.weight", "attn_k.weight", "attn_v.weight")}
        wqkv = fuse_wqkv(blk["attn_q.weight"], blk["attn_k.weight"], blk["attn_v.weight"], n_head, n_kv)
        for got, want in zip(split_wqkv(wqkv, n_head, n_kv), blk.values()):
            assert np.array_equal(got, want), f"layer {i}: wqkv split does not give the GGUF back"
        out[f"model.layers.{i}.attention.wqkv.weight"] = wqkv
        for src, dst in GGUF_TO_INTERNLM2.items():
            out[f"model.layers.{i}.{dst}"] = t[f"blk.{i}.{src}"]
    return out


def added_ids(vocab: make_fixtures.Vocab) -> list[int]:
    return [vocab.tokens.index(t) for t in make_fixtures.INTERNLM2_ADDED]


def write_tokenizer_model(vocab: make_fixtures.Vocab, path: Path) -> None:
    from sentencepiece import sentencepiece_model_pb2 as spm

    m = spm.ModelProto()
    added = set(added_ids(vocab))
    types = spm.ModelProto.SentencePiece
    for i, text in enumerate(vocab.tokens):
        p = m.pieces.add()
        if i in added:
            p.piece, p.score, p.type = f"[UNUSED_TOKEN_{UNUSED_BASE + i - min(added)}]", 0.0, types.NORMAL
        elif text == "<unk>":
            p.piece, p.score, p.type = text, 0.0, types.UNKNOWN
        elif text in ("<s>", "</s>"):
            p.piece, p.score, p.type = text, 0.0, types.CONTROL
        else:
            byte = vocab.token_types[i] == int(gguf.TokenType.BYTE)
            p.piece, p.score, p.type = text, vocab.scores[i], types.BYTE if byte else types.NORMAL
    m.trainer_spec.model_type = spm.TrainerSpec.BPE
    m.trainer_spec.vocab_size = len(vocab.tokens)
    m.trainer_spec.byte_fallback = True
    m.trainer_spec.unk_id, m.trainer_spec.bos_id, m.trainer_spec.eos_id, m.trainer_spec.pad_id = 0, 1, 2, -1
    m.normalizer_spec.name = "identity"
    m.normalizer_spec.add_dummy_prefix = True
    m.normalizer_spec.remove_extra_whitespaces = False
    m.normalizer_spec.escape_whitespaces = True
    path.write_bytes(m.SerializeToString())


def converter_vocab(folder: Path, n_vocab: int) -> tuple[list[str], list[float], list[int]]:
    """InternLM2Model.set_vocab's token loop and added_tokens_decoder rule, transcribed."""
    from sentencepiece import SentencePieceProcessor

    sp = SentencePieceProcessor()
    sp.LoadFromFile(str(folder / "tokenizer.model"))
    tokens, scores, types = [], [], []
    for i in range(n_vocab):
        piece = sp.IdToPiece(i)
        kind = gguf.TokenType.NORMAL
        if sp.IsUnknown(i):
            kind = gguf.TokenType.UNKNOWN
        elif sp.IsControl(i):
            kind = gguf.TokenType.CONTROL
        elif sp.IsUnused(i):
            kind = gguf.TokenType.UNUSED
        elif sp.IsByte(i):
            kind = gguf.TokenType.BYTE
        if piece.startswith("[UNUSED"):
            kind = gguf.TokenType.UNUSED
        tokens.append("🐉" if piece == "\x00" else piece)
        scores.append(sp.GetScore(i))
        types.append(int(kind))
    config = json.loads((folder / "tokenizer_config.json").read_text())
    for key, entry in config["added_tokens_decoder"].items():
        i = int(key)
        tokens[i], scores[i] = entry["content"], -1000.0
        types[i] = int(gguf.TokenType.CONTROL if entry.get("special") else gguf.TokenType.USER_DEFINED)
    return tokens, scores, types


def write_configs(vocab: make_fixtures.Vocab, fx: make_fixtures.Fixture, folder: Path) -> None:
    config = {
        "architectures": ["InternLM2ForCausalLM"],
        "auto_map": AUTO_MAP,
        "model_type": "internlm2",
        "attn_implementation": "eager",
        "bias": False,
        "bos_token_id": vocab.bos_id,
        "eos_token_id": vocab.tokens.index("</s>"),
        "pad_token_id": vocab.pad_id,
        "hidden_act": "silu",
        "hidden_size": fx.n_embd,
        "initializer_range": 0.02,
        "intermediate_size": fx.n_ff,
        "max_position_embeddings": fx.n_ctx_train,
        "num_attention_heads": fx.n_head,
        "num_hidden_layers": fx.n_layer,
        "num_key_value_heads": fx.n_head_kv,
        "rms_norm_eps": fx.rms_eps,
        "rope_scaling": None,
        "rope_theta": fx.rope_base,
        "tie_word_embeddings": False,
        "torch_dtype": "float16",
        "use_cache": True,
        "vocab_size": len(vocab.tokens),
    }
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    special = [0, 1, 2] + added_ids(vocab)
    decoder = {str(i): {"content": vocab.tokens[i], "lstrip": False, "normalized": False, "rstrip": False,
                        "single_word": False, "special": True} for i in special}
    tok_config = {
        "add_bos_token": True,
        "add_eos_token": False,
        "added_tokens_decoder": decoder,
        "auto_map": {"AutoTokenizer": ["tokenization_internlm2.InternLM2Tokenizer",
                                       "tokenization_internlm2_fast.InternLM2TokenizerFast"]},
        "bos_token": "<s>",
        "chat_template": make_fixtures.INTERNLM2_CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False,
        "eos_token": "</s>",
        "model_max_length": 1000000000000000019884624838656,
        "pad_token": "</s>",
        "tokenizer_class": "InternLM2Tokenizer",
        "unk_token": "<unk>",
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(tok_config, indent=2, ensure_ascii=False) + "\n")


def make(repo: Path, llama_cpp: Path) -> Path:
    from safetensors.numpy import save_file

    fx = next(f for f in make_fixtures.INTERNLM2_FIXTURES if f.stem == SOURCE_STEM)
    vocab = make_fixtures.internlm2_vocab(llama_cpp / "models" / "ggml-vocab-llama-spm.gguf")
    reader = gguf.GGUFReader(repo / "tests" / "fixtures" / f"{SOURCE_STEM}.gguf")
    if reader.fields["tokenizer.ggml.tokens"].contents() != vocab.tokens:
        sys.exit(f"error: {SOURCE_STEM}.gguf does not hold make_fixtures.internlm2_vocab's tokens")
    folder = repo / "tests" / "fixtures" / STEM
    folder.mkdir(parents=True)
    write_configs(vocab, fx, folder)
    write_tokenizer_model(vocab, folder / "tokenizer.model")
    got = converter_vocab(folder, len(vocab.tokens))
    want = (vocab.tokens, [float(np.float32(s)) for s in vocab.scores], vocab.token_types)
    for name, a, b in zip(("tokens", "scores", "types"), got, want):
        if list(a) != list(b):
            bad = next(i for i, (x, y) in enumerate(zip(a, b)) if x != y)
            sys.exit(f"error: converter vocab {name}[{bad}] = {a[bad]!r}, GGUF has {b[bad]!r}")
    tensors = weights(reader, fx.n_head, fx.n_head_kv)
    save_file({k: np.ascontiguousarray(v) for k, v in sorted(tensors.items())}, str(folder / "model.safetensors"),
              metadata={"format": "pt"})
    return folder
