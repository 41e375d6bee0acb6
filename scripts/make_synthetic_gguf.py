#!/usr/bin/env python3
"""Write a synthetic ~500 MB Q8_0 GGUF with a 0.5B model's shape, for cold-start benchmarks.

Usage: make_synthetic_gguf.py [--out .state/models/synthetic-0.5b-q8_0.gguf] [--seed 0]

LLaMA architecture, Qwen2-0.5B-like dimensions (24 layers, n_embd 896, 14 heads, 2 KV heads,
n_ff 4864) and a 64,000-token vocabulary (the tiny model's SentencePiece byte vocab,
scripts/make_tiny_model.py, padded with plain ASCII word tokens), so that llama.cpp loads it
and generates (nonsense) text at the cost of a real 0.5B model. Every matrix is Q8_0 made of
seeded random int8 blocks with one small f16 scale (no float weights are generated, so the
file takes seconds to write). Same seed -> same bytes.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import gguf
import numpy as np

from scripts.gguf_file import open_writer, publish
from scripts.make_tiny_model import BOS_ID, CHAT_TEMPLATE, EOS_ID, UNK_ID, build_vocab

N_VOCAB = 64000
N_EMBD = 896
N_HEAD = 14
N_HEAD_KV = 2
N_LAYER = 24
N_FF = 4864
N_CTX = 4096
HEAD_DIM = N_EMBD // N_HEAD
Q8_BLOCK = 32  # weights per Q8_0 block: an f16 scale and 32 int8
SCALE = np.float16(0.002)


def vocab() -> tuple[list[str], list[float], list[int]]:
    tokens, scores, types, _ = build_vocab()
    for i in range(N_VOCAB - len(tokens)):
        tokens.append(f"\u2581w{i}")
        types.append(int(gguf.TokenType.NORMAL))
    scores = [0.0] * len(tokens)
    return tokens, scores, types


def q8_0(rng: np.random.Generator, rows: int, cols: int) -> np.ndarray:
    """Raw Q8_0 bytes of a [rows, cols] matrix: per block the f16 scale, then 32 int8."""
    blocks = rows * cols // Q8_BLOCK
    raw = np.empty((blocks, 34), dtype=np.uint8)
    raw[:, :2] = np.frombuffer(SCALE.tobytes(), dtype=np.uint8)
    raw[:, 2:] = rng.integers(-127, 128, size=(blocks, 32), dtype=np.int8).view(np.uint8)
    return raw.reshape(rows, cols // Q8_BLOCK * 34)


def write_model(out: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    tokens, scores, types = vocab()
    w = open_writer(out, "llama")
    w.add_name("synthetic-0.5b-q8_0")
    w.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0)
    w.add_context_length(N_CTX)
    w.add_embedding_length(N_EMBD)
    w.add_block_count(N_LAYER)
    w.add_feed_forward_length(N_FF)
    w.add_head_count(N_HEAD)
    w.add_head_count_kv(N_HEAD_KV)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_rope_dimension_count(HEAD_DIM)
    w.add_rope_freq_base(1e6)
    w.add_vocab_size(len(tokens))
    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_unk_token_id(UNK_ID)
    w.add_bos_token_id(BOS_ID)
    w.add_eos_token_id(EOS_ID)
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)
    w.add_add_space_prefix(False)
    w.add_chat_template(CHAT_TEMPLATE)

    def mat(name: str, rows: int, cols: int) -> None:
        # the raw bytes' shape [rows, cols / 32 * 34]: gguf derives [rows, cols] from it
        w.add_tensor(name, q8_0(rng, rows, cols), raw_dtype=gguf.GGMLQuantizationType.Q8_0)

    def norm(name: str) -> None:
        w.add_tensor(name, np.ones(N_EMBD, dtype=np.float32))

    mat("token_embd.weight", N_VOCAB, N_EMBD)
    kv = N_HEAD_KV * HEAD_DIM
    for i in range(N_LAYER):
        norm(f"blk.{i}.attn_norm.weight")
        mat(f"blk.{i}.attn_q.weight", N_EMBD, N_EMBD)
        mat(f"blk.{i}.attn_k.weight", kv, N_EMBD)
        mat(f"blk.{i}.attn_v.weight", kv, N_EMBD)
        mat(f"blk.{i}.attn_output.weight", N_EMBD, N_EMBD)
        norm(f"blk.{i}.ffn_norm.weight")
        mat(f"blk.{i}.ffn_gate.weight", N_FF, N_EMBD)
        mat(f"blk.{i}.ffn_up.weight", N_FF, N_EMBD)
        mat(f"blk.{i}.ffn_down.weight", N_EMBD, N_FF)
    norm("output_norm.weight")
    mat("output.weight", N_VOCAB, N_EMBD)
    publish(w, out)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path(".state/models/synthetic-0.5b-q8_0.gguf"))
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    write_model(args.out, args.seed)
    print(f"{args.out} {args.out.stat().st_size} bytes")


if __name__ == "__main__":
    main()
