"""Dynamic batching: concurrent requests share model calls; one thread owns the model.

Requests queue their token sequences. The batcher thread waits until the oldest waiting request
is ``window_s`` old (or ``max_batch_size`` inputs wait), then takes up to ``max_batch_size``
inputs in arrival order, from several requests, into one model call, and hands each request its
rows back. A request with more inputs than ``max_batch_size`` spans several calls. With
``window_s == 0`` nothing is merged: each call serves one request (the comparison baseline).

Admission, the wait queue and drain are llmfn's ModelLoop (shared with generate's scheduler):
``queue_size`` requests may wait beyond the running call; more get 429. llama-cpp-python is not
thread-safe, so only the loop thread calls ``run``.
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import numpy as np
from prometheus_client import CollectorRegistry, Histogram

from llmfn.errors import ShuttingDown
from llmfn.worker import ModelLoop

log = logging.getLogger(__name__)

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Pending:
    """One request's sequences and, once done, its vectors (or the error that ended it)."""

    def __init__(self, seqs: list[list[int]]):
        self.seqs = seqs
        self.vectors: np.ndarray | None = None
        self.error: BaseException | None = None
        self.done = threading.Event()
        self.arrived = time.monotonic()
        self.next = 0      # first input not yet taken into a model call
        self.filled = 0    # inputs whose vectors arrived

    def wait(self, timeout_s: float | None = None) -> np.ndarray:
        """Block until every input is embedded; re-raise the error that ended the request."""
        if not self.done.wait(timeout_s):
            raise TimeoutError("embedding did not finish in time")
        if self.error is not None:
            raise self.error
        assert self.vectors is not None  # done without an error: every input's vector is in
        return self.vectors

    def _fail(self, err: BaseException) -> None:
        if not self.done.is_set():
            self.error = err
            self.done.set()


class Batcher(ModelLoop):
    """Merges waiting requests into model calls of up to ``max_batch_size`` inputs."""

    def __init__(self, run: Callable[[list[list[int]]], np.ndarray], *, window_s: float,
                 max_batch_size: int, queue_size: int, retry_after_s: int = 2, metrics=None,
                 registry: CollectorRegistry | None = None, name: str = "embed-batcher"):
        super().__init__(queue_size=queue_size, retry_after_s=retry_after_s, metrics=metrics,
                         name=name)
        self.run = run
        self.window_s = window_s
        self.max_batch_size = max_batch_size
        self.capacity = max_batch_size  # requests one model call can hold
        registry = registry if registry is not None else CollectorRegistry()
        self._batch_inputs = Histogram("llmfn_embed_batch_inputs", "inputs per model call",
                                       buckets=BATCH_BUCKETS, registry=registry)
        self._batch_requests = Histogram("llmfn_embed_batch_requests",
                                         "requests sharing one model call",
                                         buckets=BATCH_BUCKETS, registry=registry)
        self._in_call: list[Pending] = []
        self._start()

    def submit(self, seqs: list[list[int]]) -> Pending:
        """Queue a request's sequences; QueueFull when ``queue_size`` requests already wait."""
        return super().submit(Pending(seqs))

    # -- ModelLoop hooks ------------------------------------------------------------------------
    def _room(self) -> int:
        return 0 if self._in_call else 1

    def _running(self) -> int:
        return len(self._in_call)

    def _abort(self) -> None:
        for item in self._pending:
            item._fail(ShuttingDown(self.retry_after_s))
        self._pending.clear()

    def _waiting_inputs(self) -> int:
        return sum(len(p.seqs) - p.next for p in self._pending)

    def _take(self) -> list[tuple[Pending, int, int]]:
        """Slices (request, start, end) for the next call, oldest first (lock held)."""
        parts, n = [], 0
        while self._pending and n < self.max_batch_size:
            item = self._pending[0]
            end = min(len(item.seqs), item.next + self.max_batch_size - n)
            parts.append((item, item.next, end))
            n += end - item.next
            item.next = end
            if end == len(item.seqs):
                self._pending.popleft()
            if self.window_s == 0:
                break  # no merging across requests
        return parts

    def _step(self) -> None:
        with self._cond:
            if not self._pending:
                return
            if self.window_s > 0:
                deadline = self._pending[0].arrived + self.window_s
                while (self._pending and self._accepting
                       and self._waiting_inputs() < self.max_batch_size):
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._cond.wait(left)
                if not self._pending:
                    return
            parts = self._take()
            self._in_call = list(dict.fromkeys(p for p, _, _ in parts))
            self._gauge()
        try:
            self._call(parts)
        finally:
            with self._cond:
                self._in_call = []

    def _call(self, parts: list[tuple[Pending, int, int]]) -> None:
        seqs = [s for item, a, b in parts for s in item.seqs[a:b]]
        try:
            vectors = self.run(seqs)
        except BaseException as err:  # delivered to every request of this call
            log.exception("model call of %d inputs failed", len(seqs))
            with self._cond:
                for item, _, _ in parts:
                    item._fail(err)
                    if item in self._pending:
                        self._pending.remove(item)
            return
        self._batch_inputs.observe(len(seqs))
        self._batch_requests.observe(len({id(p) for p, _, _ in parts}))
        row = 0
        for item, a, b in parts:
            if item.vectors is None:
                item.vectors = np.empty((len(item.seqs), vectors.shape[1]), dtype=vectors.dtype)
            item.vectors[a:b] = vectors[row:row + b - a]
            row += b - a
            item.filled += b - a
            if item.filled == len(item.seqs):
                item.done.set()
