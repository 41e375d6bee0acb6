"""A llama.cpp ``llama_batch`` filled through numpy views (one sequence id per token).

generate's slot scheduler and embed's engine both build batches token by token; ctypes field
access per token is slow, so the batch's arrays are viewed as numpy arrays once.
"""
from __future__ import annotations

import ctypes

import llama_cpp
import numpy as np


class Batch:
    """Up to ``capacity`` tokens for one ``llama_decode``; free with :meth:`close`."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.raw = llama_cpp.llama_batch_init(capacity, 0, 1)
        b = self.raw
        self.token = np.ctypeslib.as_array(b.token, shape=(capacity,))
        self.pos = np.ctypeslib.as_array(b.pos, shape=(capacity,))
        self.n_seq_id = np.ctypeslib.as_array(b.n_seq_id, shape=(capacity,))
        self.logits = np.ctypeslib.as_array(ctypes.cast(b.logits, ctypes.POINTER(ctypes.c_int8)),
                                            shape=(capacity,))
        self._seq_id = [np.ctypeslib.as_array(b.seq_id[i], shape=(1,)) for i in range(capacity)]
        self.n = 0

    def clear(self) -> None:
        self.n = 0

    @property
    def room(self) -> int:
        return self.capacity - self.n

    def add(self, tokens, start_pos: int, seq: int, *, logits_last: bool,
            logits_all: bool = False) -> int:
        """Append ``tokens`` of sequence ``seq`` at positions ``start_pos...``; returns the batch
        index of the last one (whose logits are kept if ``logits_last``)."""
        k, n = len(tokens), self.n
        if k > self.capacity - n:
            raise ValueError(f"batch overflow: {n} + {k} > {self.capacity}")
        self.token[n:n + k] = tokens
        self.pos[n:n + k] = np.arange(start_pos, start_pos + k)
        for j in range(n, n + k):
            self._seq_id[j][0] = seq
        self.n_seq_id[n:n + k] = 1
        self.logits[n:n + k] = 1 if logits_all else 0
        if logits_last:
            self.logits[n + k - 1] = 1
        self.n = n + k
        return n + k - 1

    def decode(self, ctx) -> None:
        """``llama_decode`` of the tokens added since :meth:`clear`."""
        self.raw.n_tokens = self.n
        rc = llama_cpp.llama_decode(ctx, self.raw)
        if rc != 0:
            raise RuntimeError(f"llama_decode returned {rc} for {self.n} tokens")

    def close(self) -> None:
        llama_cpp.llama_batch_free(self.raw)
