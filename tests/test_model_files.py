"""The model-preparation scripts: the tiny test LLaMA and the MiniLM BERT conversion.

Both scripts run through their CLI into a session tmp dir; the files are then loaded by the
real llama.cpp (llama-cpp-python), as the generate and embed functions load them.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import gguf
import llama_cpp
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "scripts"
GOLDEN = REPO / "tests" / "fixtures" / "minilm_reference_embeddings.json"
TINY_MAX_BYTES = 2 * 1024 * 1024
MIN_COSINE = 0.999


def run_script(name: str, out: Path) -> Path:
    """Run scripts/<name> --out <out> as a user would, bounded in time."""
    subprocess.run([sys.executable, str(SCRIPTS / name), "--out", str(out)],
                   check=True, cwd=REPO, timeout=300, capture_output=True)
    return out


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def golden_items() -> list[dict]:
    return json.loads(GOLDEN.read_text(encoding="utf-8"))["items"]


@pytest.fixture(scope="session")
def tiny_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return run_script("make_tiny_model.py", tmp_path_factory.mktemp("tiny") / "tiny-llama.gguf")


@pytest.fixture(scope="session")
def minilm_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("minilm") / "all-minilm-l6-v2-f16.gguf"
    return run_script("convert_minilm.py", out)


@pytest.fixture(scope="module")
def tiny(tiny_path: Path) -> llama_cpp.Llama:
    return llama_cpp.Llama(model_path=str(tiny_path), n_ctx=256, verbose=False, seed=7)


@pytest.fixture(scope="module")
def minilm(minilm_path: Path) -> llama_cpp.Llama:
    return llama_cpp.Llama(model_path=str(minilm_path), embedding=True, verbose=False)


# --- tiny LLaMA ---------------------------------------------------------------------------

def test_tiny_model_is_small_and_deterministic(tiny_path: Path, tmp_path: Path) -> None:
    assert tiny_path.stat().st_size < TINY_MAX_BYTES
    again = run_script("make_tiny_model.py", tmp_path / "again.gguf")
    assert sha256(again) == sha256(tiny_path)


@pytest.mark.parametrize("text", ["Hello world", "  two  spaces\nand a newline\t", "Grüße, 世界 🚀",
                                  "<|im_end|> as text"])
def test_tiny_tokenize_round_trip(tiny: llama_cpp.Llama, text: str) -> None:
    tokens = tiny.tokenize(text.encode("utf-8"))
    assert tokens[0] == tiny.token_bos()
    # without the BOS: llama-cpp-python drops one leading space after a BOS (SPM habit)
    assert tiny.detokenize(tokens[1:]).decode("utf-8") == text


@pytest.mark.parametrize("n", [1, 5, 32])
def test_tiny_completion_yields_exactly_max_tokens(tiny: llama_cpp.Llama, n: int) -> None:
    out = tiny.create_completion("Once upon a time", max_tokens=n)
    assert out["usage"]["completion_tokens"] == n
    assert out["choices"][0]["finish_reason"] == "length"
    assert out["choices"][0]["text"].isprintable()


def test_tiny_streaming_yields_one_chunk_per_token(tiny: llama_cpp.Llama) -> None:
    chunks = list(tiny.create_completion("abc", max_tokens=6, stream=True))
    texts = [c["choices"][0]["text"] for c in chunks if c["choices"][0]["text"]]
    assert len(texts) == 6
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"


def test_tiny_chat_uses_embedded_chatml_template(tiny: llama_cpp.Llama) -> None:
    assert "<|im_start|>" in tiny.metadata["tokenizer.chat_template"]
    assert tiny.chat_format == "chat_template.default"  # formatter built from the metadata

    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    out = tiny.create_chat_completion(messages=messages, max_tokens=4)

    prompt = ("<s><|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
              "<|im_start|>assistant\n")
    expected_prompt_tokens = len(tiny.tokenize(prompt.encode("utf-8"), add_bos=False, special=True))
    assert out["usage"]["prompt_tokens"] == expected_prompt_tokens
    assert out["usage"]["completion_tokens"] == 4
    choice = out["choices"][0]
    assert choice["message"]["role"] == "assistant"
    assert choice["finish_reason"] == "length"


# --- all-MiniLM-L6-v2 ---------------------------------------------------------------------

def test_minilm_converter_is_deterministic(minilm_path: Path, tmp_path: Path) -> None:
    again = run_script("convert_minilm.py", tmp_path / "again.gguf")
    assert sha256(again) == sha256(minilm_path)


def test_minilm_gguf_layout(minilm_path: Path) -> None:
    reader = gguf.GGUFReader(minilm_path)

    def scalar(key: str):
        return reader.fields[key].contents()

    assert scalar("general.architecture") == "bert"
    assert scalar("tokenizer.ggml.model") == "bert"
    assert scalar("bert.pooling_type") == gguf.PoolingType.MEAN
    assert scalar("bert.attention.causal") is False
    types = {t.name: t.tensor_type for t in reader.tensors}
    assert types["token_embd.weight"] == gguf.GGMLQuantizationType.F16
    assert types["blk.5.ffn_down.weight"] == gguf.GGMLQuantizationType.F16
    assert types["blk.5.layer_output_norm.weight"] == gguf.GGMLQuantizationType.F32
    assert types["blk.0.attn_q.bias"] == gguf.GGMLQuantizationType.F32
    assert types["position_embd.weight"] == gguf.GGMLQuantizationType.F32


@pytest.mark.parametrize("item", golden_items(), ids=lambda item: repr(item["text"][:24]))
def test_minilm_matches_reference_embedding(minilm: llama_cpp.Llama, item: dict) -> None:
    got = np.asarray(minilm.embed(item["text"]), dtype=np.float64)
    ref = np.asarray(item["embedding"], dtype=np.float64)
    assert got.shape == ref.shape
    cosine = float(got @ ref / (np.linalg.norm(got) * np.linalg.norm(ref)))
    assert cosine >= MIN_COSINE
