#!/usr/bin/env python3
"""Write a tiny, seeded, LLaMA-architecture GGUF for fast API tests (not for answer quality).

Usage: make_tiny_model.py [--out .state/models/tiny-llama.gguf] [--seed 0]

The vocabulary is a SentencePiece ("llama") vocab with byte fallback: <unk>, <s>, </s>,
<|im_start|>, <|im_end|>, the 256 byte tokens <0x00>..<0xFF> and "\u2581" (the escaped space),
so llama.cpp can tokenize and detokenize any text. A ChatML template is embedded as
`tokenizer.chat_template`.

Generation never ends early: residual dimension 0 holds a constant positive value in every
layer (no layer writes to it), and the output head gives every token except printable ASCII a
large negative weight on that dimension. So `max_tokens=N` always yields exactly N tokens
of printable ASCII text, and no end-of-generation token is ever sampled.
Same seed -> same bytes.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import gguf
import numpy as np

from scripts.gguf_file import open_writer, publish

ARCH = "llama"
N_VOCAB_SPECIAL = ("<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>")
UNK_ID, BOS_ID, EOS_ID = 0, 1, 4  # eos is <|im_end|>, the ChatML end of turn
N_EMBD = 64
N_HEAD = 4
N_LAYER = 2
N_FF = 128
N_CTX = 256
RMS_EPS = 1e-5
ROPE_BASE = 10000.0
BLOCKED_LOGIT_WEIGHT = -100.0  # output weight on the constant dimension for banned tokens

CHAT_TEMPLATE = (  # ChatML; starts with bos_token because llama-cpp-python adds none for templates
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def build_vocab() -> tuple[list[str], list[float], list[int], np.ndarray]:
    """Return tokens, scores, token types and a bool mask of tokens the model may generate."""
    tokens = list(N_VOCAB_SPECIAL)
    types = [gguf.TokenType.UNKNOWN] + [gguf.TokenType.CONTROL] * (len(N_VOCAB_SPECIAL) - 1)
    allowed = [False] * len(N_VOCAB_SPECIAL)
    for byte in range(256):
        tokens.append(f"<0x{byte:02X}>")
        types.append(gguf.TokenType.BYTE)
        allowed.append(0x20 <= byte <= 0x7E)
    tokens.append("\u2581")  # SentencePiece's escaped space; without it a space costs 3 bytes
    types.append(gguf.TokenType.NORMAL)
    allowed.append(True)
    scores = [0.0] * len(tokens)
    return tokens, scores, [int(t) for t in types], np.array(allowed)


def build_tensors(rng: np.random.Generator, allowed: np.ndarray) -> dict[str, np.ndarray]:
    """Random f32 weights (numpy layout [out, in]) with the constant-dimension trick above."""
    n_vocab = len(allowed)

    def rand(*shape: int, std: float) -> np.ndarray:
        return (rng.standard_normal(shape) * std).astype(np.float32)

    tok_embd = rand(n_vocab, N_EMBD, std=0.02)
    tok_embd[:, 0] = 1.0  # constant, positive: after RMS norm it is ~sqrt(N_EMBD)
    tensors = {"token_embd.weight": tok_embd}
    for i in range(N_LAYER):
        wo = rand(N_EMBD, N_EMBD, std=0.02)
        down = rand(N_EMBD, N_FF, std=0.02)
        wo[0, :] = 0.0  # no layer writes to dimension 0
        down[0, :] = 0.0
        tensors.update({
            f"blk.{i}.attn_norm.weight": np.ones(N_EMBD, dtype=np.float32),
            f"blk.{i}.attn_q.weight": rand(N_EMBD, N_EMBD, std=0.02),
            f"blk.{i}.attn_k.weight": rand(N_EMBD, N_EMBD, std=0.02),
            f"blk.{i}.attn_v.weight": rand(N_EMBD, N_EMBD, std=0.02),
            f"blk.{i}.attn_output.weight": wo,
            f"blk.{i}.ffn_norm.weight": np.ones(N_EMBD, dtype=np.float32),
            f"blk.{i}.ffn_gate.weight": rand(N_FF, N_EMBD, std=0.02),
            f"blk.{i}.ffn_up.weight": rand(N_FF, N_EMBD, std=0.02),
            f"blk.{i}.ffn_down.weight": down,
        })
    output = rand(n_vocab, N_EMBD, std=0.5)
    output[:, 0] = np.where(allowed, 0.0, BLOCKED_LOGIT_WEIGHT).astype(np.float32)
    tensors["output_norm.weight"] = np.ones(N_EMBD, dtype=np.float32)
    tensors["output.weight"] = output
    return tensors


def write_model(out: Path, seed: int) -> None:
    """Write the GGUF to a temp file next to `out`, then rename it into place."""
    rng = np.random.default_rng(seed)
    tokens, scores, types, allowed = build_vocab()
    tensors = build_tensors(rng, allowed)

    writer = open_writer(out, ARCH)
    writer.add_name("tiny-llama")
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_context_length(N_CTX)
    writer.add_embedding_length(N_EMBD)
    writer.add_block_count(N_LAYER)
    writer.add_feed_forward_length(N_FF)
    writer.add_head_count(N_HEAD)
    writer.add_head_count_kv(N_HEAD)
    writer.add_layer_norm_rms_eps(RMS_EPS)
    writer.add_rope_dimension_count(N_EMBD // N_HEAD)
    writer.add_rope_freq_base(ROPE_BASE)
    writer.add_vocab_size(len(tokens))

    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_unk_token_id(UNK_ID)
    writer.add_bos_token_id(BOS_ID)
    writer.add_eos_token_id(EOS_ID)
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)
    writer.add_add_space_prefix(False)  # so detokenize(tokenize(text)) == text
    writer.add_chat_template(CHAT_TEMPLATE)

    for name, data in tensors.items():
        writer.add_tensor(name, data)
    publish(writer, out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(".state/models/tiny-llama.gguf"))
    parser.add_argument("--seed", type=int, default=0, help="RNG seed for the weights")
    args = parser.parse_args(argv)
    write_model(args.out, args.seed)
    print(f"{args.out} {args.out.stat().st_size} bytes")


if __name__ == "__main__":
    main()
