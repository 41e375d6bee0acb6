"""The engine on the real MiniLM: batched decoding equals one-by-one, token limits, truncation."""
from __future__ import annotations

import numpy as np
import pytest

TEXTS = ["The cat sits on the mat.", "", "Serverless functions scale to zero when idle.",
         "Le chat est assis sur le tapis.", "!!!"]


def test_batch_equals_one_by_one_and_is_normalized(embedder):
    seqs = [embedder.tokenize(t) for t in TEXTS]
    together = embedder.embed(seqs)
    alone = np.stack([embedder.embed([s])[0] for s in seqs])
    assert together.shape == (len(TEXTS), embedder.n_embd) == (5, 384)
    assert np.allclose(np.linalg.norm(together, axis=1), 1.0, atol=1e-5)
    assert np.min(np.sum(together * alone, axis=1)) > 0.9999


def test_bert_special_tokens_and_empty_text(embedder):
    assert embedder.tokenize("") == [101, 102]  # [CLS] [SEP]
    assert embedder.tokenize("hello")[0] == 101 and embedder.tokenize("hello")[-1] == 102


def test_more_tokens_than_one_llama_batch_are_split(embedder):
    """Sequences beyond N_BATCH tokens go to further llama_decode calls, in order."""
    long = embedder.tokenize("word " * 400)  # ~402 tokens: 2048 fit 5 of them
    seqs = [long] * 6 + [embedder.tokenize("short one")]
    out = embedder.embed(seqs)
    assert np.allclose(out[0], out[5], atol=1e-4)
    assert np.sum(out[6] * embedder.embed([seqs[6]])[0]) > 0.9999


def test_truncate_keeps_sep(embedder):
    tokens = embedder.tokenize("word " * 600)
    cut = embedder.truncate(tokens)
    assert len(cut) == embedder.max_input_tokens == 512
    assert cut[0] == 101 and cut[-1] == 102
    with pytest.raises(ValueError):
        embedder.embed([tokens])
