#!/usr/bin/env python3
"""Write synthetic GGUFs with the shapes of real models (random weights), for the benchmarks and,
header-only, for the sizing tests.

Usage: make_synthetic_gguf.py [--shape qwen2.5-0.5b] [--quant q4_k_m] [--header-only]
                              [--out PATH] [--seed 0]
       make_synthetic_gguf.py --list

Without ``--shape``: the cold-start benchmark's 0.5B Q8_0 (LLaMA architecture, Qwen2-0.5B-like
dimensions, a 64,000-token vocabulary), as before. With ``--shape``: the dimensions of a real
model (:data:`SHAPES`, from its public config.json): vocabulary size, tied embeddings, GQA,
context length, RoPE base and (Llama 3) rope_freqs. Random weights cost the compute of real
ones; the text is nonsense. The vocabulary is the tiny model's SentencePiece byte vocab
(scripts/make_tiny_model.py) padded with plain word tokens to n_vocab.

Quantizations: ``q8_0`` (every matrix Q8_0) and ``q4_k_m`` (llama.cpp's Q4_K_M mix: Q4_K, with
Q6_K for the output head and for attn_v and ffn_down in the layers ``use_more_bits`` picks; a
matrix whose rows are not a multiple of 256 falls back to Q5_0 / Q8_0, as llama-quantize does).
No quantizer runs: each block is random bytes with its f16 scales set to a small constant, so
even an 8B file takes seconds of CPU (and its size in disk).

``--header-only``: metadata and tensor infos as in the full file, and no weight data written:
the file is extended to its full size as a hole (a sparse file: a few MB on disk). Its size,
its header and its tensor offsets are the real file's, so llama.cpp's loader (which checks that
every tensor lies inside the file) and llmfn.sizing accept it. Same seed -> same bytes.
"""
from __future__ import annotations

import argparse
import math
import os
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np

from scripts.gguf_file import open_writer
from scripts.make_tiny_model import BOS_ID, CHAT_TEMPLATE, EOS_ID, UNK_ID, build_vocab

Q = gguf.GGMLQuantizationType
ALIGN = 32  # GGUF's default data alignment


@dataclass(frozen=True)
class Shape:
    """A model's dimensions as its config.json gives them."""
    arch: str  # llama.cpp architecture: "llama" or "qwen2" (q/k/v biases)
    n_vocab: int
    n_embd: int
    n_layer: int
    n_head: int
    n_head_kv: int
    n_ff: int
    tied: bool  # tie_word_embeddings: no output.weight, the head reads token_embd
    n_ctx_train: int  # max_position_embeddings
    rope_theta: float
    rms_eps: float
    rope_llama3_factor: float = 0.0  # rope_scaling {"rope_type": "llama3", "factor": ...}

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head


SHAPES = {
    # the cold-start benchmark's model (docs/benchmarks.md), kept byte for byte
    "synthetic-0.5b": Shape("llama", 64000, 896, 24, 14, 2, 4864, False, 4096, 1e6, 1e-6),
    # Qwen/Qwen2.5-0.5B, -3B config.json (Qwen2ForCausalLM); meta-llama/Llama-3.2-1B,
    # Llama-3.1-8B config.json (LlamaForCausalLM, rope_scaling llama3, original 8192)
    "qwen2.5-0.5b": Shape("qwen2", 151936, 896, 24, 14, 2, 4864, True, 32768, 1e6, 1e-6),
    "llama-3.2-1b": Shape("llama", 128256, 2048, 16, 32, 8, 8192, True, 131072, 5e5, 1e-5,
                          rope_llama3_factor=32.0),
    "qwen2.5-3b": Shape("qwen2", 151936, 2048, 36, 16, 2, 11008, True, 32768, 1e6, 1e-6),
    "llama-3.1-8b": Shape("llama", 128256, 4096, 32, 32, 8, 14336, False, 131072, 5e5, 1e-5,
                          rope_llama3_factor=8.0),
}
QUANTS = ("q8_0", "q4_k_m")
FILE_TYPE = {"q8_0": gguf.LlamaFileType.MOSTLY_Q8_0, "q4_k_m": gguf.LlamaFileType.MOSTLY_Q4_K_M}
# per type: the byte offsets of its f16 scales in a block, and their value (|w| up to ~0.25)
SCALES = {Q.Q8_0: ((0,), 0.002), Q.Q4_0: ((0,), 0.03), Q.Q5_0: ((0,), 0.016),
          Q.Q4_K: ((0, 2), 2.6e-4), Q.Q6_K: ((208,), 6e-5)}
FALLBACK = {Q.Q4_K: Q.Q5_0, Q.Q6_K: Q.Q8_0}  # llama-quantize's, for rows not a multiple of 256
LEGACY_SCALE = np.float16(0.002)


def vocab(n_vocab: int) -> tuple[list[str], list[float], list[int]]:
    tokens, _, types, _ = build_vocab()
    for i in range(n_vocab - len(tokens)):
        tokens.append(f"\u2581w{i}")
        types.append(int(gguf.TokenType.NORMAL))
    return tokens, [0.0] * len(tokens), types


def use_more_bits(i: int, n: int) -> bool:
    """llama.cpp's choice of the layers Q4_K_M gives Q6_K (attn_v, ffn_down)."""
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def matrix_type(quant: str, kind: str, layer: int, shape: Shape, cols: int) -> Q:
    """The type llama-quantize gives matrix ``kind`` (token_embd, output, attn_v, ...)."""
    if quant == "q8_0":
        return Q.Q8_0
    head = kind == "output" or (kind == "token_embd" and shape.tied)
    more = kind in ("attn_v", "ffn_down") and use_more_bits(layer, shape.n_layer)
    t = Q.Q6_K if head or more else Q.Q4_K
    return FALLBACK[t] if cols % 256 else t


def nbytes(t: Q, rows: int, cols: int) -> int:
    block, size = gguf.GGML_QUANT_SIZES[t]
    return rows * cols // block * size


def tensor_list(shape: Shape, quant: str) -> list[tuple[str, tuple[int, ...], Q]]:
    """Every tensor (name, numpy shape [rows, cols], type) in llama.cpp's order."""
    s, kv = shape, shape.n_head_kv * shape.head_dim
    out: list[tuple[str, tuple[int, ...], Q]] = []

    def mat(name: str, kind: str, layer: int, rows: int, cols: int) -> None:
        out.append((name, (rows, cols), matrix_type(quant, kind, layer, s, cols)))

    mat("token_embd.weight", "token_embd", 0, s.n_vocab, s.n_embd)
    if s.rope_llama3_factor:
        out.append(("rope_freqs.weight", (s.head_dim // 2,), Q.F32))
    for i in range(s.n_layer):
        out.append((f"blk.{i}.attn_norm.weight", (s.n_embd,), Q.F32))
        mat(f"blk.{i}.attn_q.weight", "attn_q", i, s.n_embd, s.n_embd)
        mat(f"blk.{i}.attn_k.weight", "attn_k", i, kv, s.n_embd)
        mat(f"blk.{i}.attn_v.weight", "attn_v", i, kv, s.n_embd)
        if s.arch == "qwen2":
            out += [(f"blk.{i}.attn_q.bias", (s.n_embd,), Q.F32),
                    (f"blk.{i}.attn_k.bias", (kv,), Q.F32),
                    (f"blk.{i}.attn_v.bias", (kv,), Q.F32)]
        mat(f"blk.{i}.attn_output.weight", "attn_output", i, s.n_embd, s.n_embd)
        out.append((f"blk.{i}.ffn_norm.weight", (s.n_embd,), Q.F32))
        mat(f"blk.{i}.ffn_gate.weight", "ffn_gate", i, s.n_ff, s.n_embd)
        mat(f"blk.{i}.ffn_up.weight", "ffn_up", i, s.n_ff, s.n_embd)
        mat(f"blk.{i}.ffn_down.weight", "ffn_down", i, s.n_embd, s.n_ff)
    out.append(("output_norm.weight", (s.n_embd,), Q.F32))
    if not s.tied:
        mat("output.weight", "output", 0, s.n_vocab, s.n_embd)
    return out


def rope_freqs(shape: Shape) -> np.ndarray:
    """Llama 3's RoPE scaling factors (convert_hf_to_gguf.py's, low 1, high 4, original 8192)."""
    factor, low, high, old = shape.rope_llama3_factor, 1.0, 4.0, 8192
    dim = shape.head_dim
    freqs = 1.0 / (shape.rope_theta ** (np.arange(0, dim, 2, dtype=np.float64) / dim))
    out = []
    for f in freqs:
        wavelen = 2 * math.pi / f
        if wavelen < old / high:
            out.append(1.0)
        elif wavelen > old / low:
            out.append(factor)
        else:
            smooth = (old / wavelen - low) / (high - low)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return np.array(out, dtype=np.float32)


def random_blocks(rng: np.random.Generator, t: Q, rows: int, cols: int) -> np.ndarray:
    """Raw bytes of a [rows, cols] matrix of type ``t``: random blocks, finite f16 scales."""
    block, size = gguf.GGML_QUANT_SIZES[t]
    raw = rng.integers(0, 256, size=(rows * cols // block, size), dtype=np.uint8)
    offsets, value = SCALES[t]
    scale = np.frombuffer(np.float16(value).tobytes(), dtype=np.uint8)
    for off in offsets:
        raw[:, off:off + 2] = scale
    return raw


def tensor_data(rng: np.random.Generator, shape: Shape, name: str, dims: tuple[int, ...],
                t: Q) -> np.ndarray:
    if t == Q.F32:
        if name == "rope_freqs.weight":
            return rope_freqs(shape)
        return (np.zeros if name.endswith(".bias") else np.ones)(dims, dtype=np.float32)
    return random_blocks(rng, t, *dims)


def write_shape(out: Path, shape_name: str, quant: str, *, seed: int = 0,
                header_only: bool = False) -> None:
    """Write the GGUF of ``shape_name`` in ``quant`` to ``out`` (temp file, then rename)."""
    s = SHAPES[shape_name]
    rng = np.random.default_rng(seed)
    tokens, scores, types = vocab(s.n_vocab)
    w = open_writer(out, s.arch)
    w.add_name(f"synthetic-{shape_name}-{quant}")
    w.add_file_type(FILE_TYPE[quant])
    _add_shape(w, s, tokens, scores, types)
    tensors = tensor_list(s, quant)
    for name, dims, t in tensors:
        n = nbytes(t, *dims) if len(dims) == 2 else dims[0] * 4
        w.add_tensor_info(name, dims, np.dtype(np.float32), n,
                          raw_dtype=None if t == Q.F32 else t)
    tmp = out.with_name(out.name + ".tmp")
    try:
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_ti_data_to_file()
        if not header_only:
            for name, dims, t in tensors:  # one tensor in memory at a time
                w.write_tensor_data(tensor_data(rng, s, name, dims, t))
    finally:
        w.close()
    if header_only:
        start = _pad(tmp.stat().st_size)
        end = start + sum(_pad(nbytes(t, *d) if len(d) == 2 else d[0] * 4) for _, d, t in tensors)
        os.truncate(tmp, end)  # a hole: the size of the real file, none of its blocks
    os.replace(tmp, out)


def _pad(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


def _add_shape(w: gguf.GGUFWriter, s: Shape, tokens: list[str], scores: list[float],
               types: list[int]) -> None:
    """The model's shape and its tokenizer, in the order both writers have always used."""
    w.add_context_length(s.n_ctx_train)
    w.add_embedding_length(s.n_embd)
    w.add_block_count(s.n_layer)
    w.add_feed_forward_length(s.n_ff)
    w.add_head_count(s.n_head)
    w.add_head_count_kv(s.n_head_kv)
    w.add_layer_norm_rms_eps(s.rms_eps)
    w.add_rope_dimension_count(s.head_dim)
    w.add_rope_freq_base(s.rope_theta)
    w.add_vocab_size(len(tokens))
    _add_tokenizer(w, tokens, scores, types)


def _add_tokenizer(w: gguf.GGUFWriter, tokens: list[str], scores: list[float],
                   types: list[int]) -> None:
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


def write_legacy(out: Path, seed: int) -> None:
    """The cold-start benchmark's synthetic 0.5B Q8_0 (its bytes as before this script took
    shapes: the benchmark's figures stay comparable)."""
    s = SHAPES["synthetic-0.5b"]
    rng = np.random.default_rng(seed)
    tokens, scores, types = vocab(s.n_vocab)
    w = open_writer(out, "llama")
    w.add_name("synthetic-0.5b-q8_0")
    w.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0)
    _add_shape(w, s, tokens, scores, types)

    def q8_0(rows: int, cols: int) -> np.ndarray:
        blocks = rows * cols // 32
        raw = np.empty((blocks, 34), dtype=np.uint8)
        raw[:, :2] = np.frombuffer(LEGACY_SCALE.tobytes(), dtype=np.uint8)
        raw[:, 2:] = rng.integers(-127, 128, size=(blocks, 32), dtype=np.int8).view(np.uint8)
        return raw.reshape(rows, cols // 32 * 34)

    def mat(name: str, rows: int, cols: int) -> None:
        w.add_tensor(name, q8_0(rows, cols), raw_dtype=Q.Q8_0)

    def norm(name: str) -> None:
        w.add_tensor(name, np.ones(s.n_embd, dtype=np.float32))

    mat("token_embd.weight", s.n_vocab, s.n_embd)
    kv = s.n_head_kv * s.head_dim
    for i in range(s.n_layer):
        norm(f"blk.{i}.attn_norm.weight")
        mat(f"blk.{i}.attn_q.weight", s.n_embd, s.n_embd)
        mat(f"blk.{i}.attn_k.weight", kv, s.n_embd)
        mat(f"blk.{i}.attn_v.weight", kv, s.n_embd)
        mat(f"blk.{i}.attn_output.weight", s.n_embd, s.n_embd)
        norm(f"blk.{i}.ffn_norm.weight")
        mat(f"blk.{i}.ffn_gate.weight", s.n_ff, s.n_embd)
        mat(f"blk.{i}.ffn_up.weight", s.n_ff, s.n_embd)
        mat(f"blk.{i}.ffn_down.weight", s.n_embd, s.n_ff)
    norm("output_norm.weight")
    mat("output.weight", s.n_vocab, s.n_embd)
    try:
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
    finally:
        w.close()
    os.replace(out.with_name(out.name + ".tmp"), out)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", choices=[k for k in SHAPES if k != "synthetic-0.5b"])
    ap.add_argument("--quant", choices=QUANTS, default="q8_0")
    ap.add_argument("--header-only", action="store_true",
                    help="metadata and tensor infos only; the data is a hole (sparse file)")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--list", action="store_true", help="print the shapes and exit")
    args = ap.parse_args(argv)
    if args.list:
        for name, s in SHAPES.items():
            print(name, s)
        return
    if args.shape is None:
        out = args.out or Path(".state/models/synthetic-0.5b-q8_0.gguf")
        write_legacy(out, args.seed)
    else:
        out = args.out or Path(f".state/models/synthetic-{args.shape}-{args.quant}.gguf")
        write_shape(out, args.shape, args.quant, seed=args.seed, header_only=args.header_only)
    print(f"{out} {out.stat().st_size} bytes")


if __name__ == "__main__":
    main()
