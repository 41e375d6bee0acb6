"""Sentence embeddings on llama-cpp-python: tokenization and batched, pooled decoding.

Like ``Llama.embed`` (llama-cpp-python 0.3.36), every input is one sequence and the sequences
of a batch are decoded together by one ``llama_decode`` call of up to N_BATCH tokens; unlike
it, this takes token ids (no re-tokenizing of token inputs), never truncates silently, and
reads the pooled vectors straight into numpy. Pooling is the GGUF's (MiniLM: mean).
``embed`` runs on the batcher thread only; ``tokenize`` is safe on request threads (it reads
the vocabulary only, as llama-server's HTTP threads do).
"""
from __future__ import annotations

import logging

import llama_cpp
import numpy as np

from llmfn.llama_backend import ensure_cpu_backend, model_file_errors
from llmfn.llama_batch import Batch
from llmfn.settings import ModelSettings, SettingsError

log = logging.getLogger(__name__)


def load_embedder(path: str, model: ModelSettings) -> Embedder:
    """Load the GGUF at ``path`` in embedding mode (called by the ModelHost's loader thread).

    N_CTX is the per-input limit; the llama.cpp context holds a whole batch of sequences, so it
    is sized max(N_CTX, N_BATCH). Non-causal (BERT) attention needs the whole batch in one
    micro-batch, so batch and micro-batch are both min(N_BATCH, N_UBATCH).
    """
    n_batch = min(model.n_batch, model.n_ubatch)
    if n_batch < model.n_ctx:
        raise SettingsError(f"N_BATCH and N_UBATCH must be >= N_CTX ({model.n_ctx}), "
                            f"got {n_batch}")
    ensure_cpu_backend()
    with model_file_errors(path):
        llm = llama_cpp.Llama(model_path=path, embedding=True,
                              n_ctx=max(model.n_ctx, n_batch), n_batch=n_batch,
                              n_ubatch=n_batch, n_threads=model.n_threads or None,
                              n_threads_batch=model.n_threads or None,
                              flash_attn=model.flash_attn, verbose=False)
    return Embedder(llm, max_input_tokens=model.n_ctx)


class Embedder:
    """One loaded embedding model."""

    def __init__(self, llm: llama_cpp.Llama, *, max_input_tokens: int):
        self.llm = llm
        self.n_embd = llm.n_embd()
        self.n_vocab = llm.n_vocab()
        self.n_batch = llm.n_batch
        self.max_input_tokens = min(max_input_tokens, llama_cpp.llama_model_n_ctx_train(llm.model))
        self.max_seqs = llm.context_params.n_seq_max
        self.pooling = llm.pooling_type()
        if self.pooling == llama_cpp.LLAMA_POOLING_TYPE_NONE:
            raise ValueError("the model has no pooling type; embed needs one vector per input")
        vocab = llama_cpp.llama_model_get_vocab(llm.model)
        self.sep = llama_cpp.llama_vocab_sep(vocab)
        self._ctx = llm.ctx
        self._batch = Batch(self.n_batch)

    def close(self) -> None:
        self._batch.close()
        self.llm.close()

    def tokenize(self, text: str) -> list[int]:
        """Tokens of ``text`` with the model's special tokens (BERT: [CLS] ... [SEP])."""
        return self.llm.tokenize(text.encode("utf-8"), add_bos=True, special=False)

    def truncate(self, tokens: list[int]) -> list[int]:
        """``tokens`` cut to the input limit, keeping a final [SEP] as BERT expects."""
        limit = self.max_input_tokens
        if len(tokens) <= limit:
            return tokens
        if tokens[-1] == self.sep and self.sep >= 0:
            return tokens[:limit - 1] + [tokens[-1]]
        return tokens[:limit]

    def embed(self, seqs: list[list[int]]) -> np.ndarray:
        """L2-normalized pooled vectors (float32, one row per sequence), in order.

        Sequences are packed into llama.cpp batches of up to N_BATCH tokens and at most
        n_seq_max sequences; each batch is one ``llama_decode``.
        """
        out = np.empty((len(seqs), self.n_embd), dtype=np.float32)
        start, used = 0, 0
        for i, seq in enumerate(seqs):
            if not seq or len(seq) > self.max_input_tokens:
                raise ValueError(f"sequence {i} has {len(seq)} tokens")
            if used + len(seq) > self.n_batch or i - start >= self.max_seqs:
                self._decode(seqs[start:i], out[start:i])
                start, used = i, 0
            used += len(seq)
        if start < len(seqs):
            self._decode(seqs[start:], out[start:])
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        np.divide(out, np.maximum(norms, 1e-12), out=out)
        return out

    def _decode(self, seqs: list[list[int]], out: np.ndarray) -> None:
        self._batch.clear()
        for s, seq in enumerate(seqs):
            # embedding mode: every token is an output (see Llama.embed)
            self._batch.add(seq, 0, s, logits_last=True, logits_all=True)
        memory = llama_cpp.llama_get_memory(self._ctx)
        if memory:
            llama_cpp.llama_memory_clear(memory, True)
        self._batch.decode(self._ctx)
        for s in range(len(seqs)):
            ptr = llama_cpp.llama_get_embeddings_seq(self._ctx, s)
            if not ptr:
                raise RuntimeError(f"no pooled embedding for sequence {s}")
            out[s] = np.ctypeslib.as_array(ptr, shape=(self.n_embd,))
