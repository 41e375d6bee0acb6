"""The OpenAI-compatible embeddings API: POST /v1/embeddings.

The request thread validates and tokenizes; the Batcher's thread runs the model, merging
concurrent requests into shared model calls; the request thread formats the answer (float
arrays, or base64 of little-endian float32 as the openai client decodes it).
"""
from __future__ import annotations

import base64
import logging
import time
from typing import cast

import numpy as np
from flask import Flask

from llmfn import openapi, routes
from llmfn.errors import APIError, ContextLengthExceeded, InvalidRequest, internal_error
from llmfn.model_runtime import Runtime
from llmfn.origin import Origin
from llmfn.protocol import to_builtins
from llmfn.shapes import Usage

from . import protocol, schema
from .batcher import Batcher
from .engine import Embedder
from .settings import EmbedSettings

log = logging.getLogger(__name__)

ENDPOINT = "/v1/embeddings"


def register(app: Flask, runtime: Runtime, embed: EmbedSettings) -> Batcher:
    """Add /v1/embeddings to ``app`` (the contract's ``routes``, func.py); returns the batcher,
    its worker (drained on stop)."""
    server = runtime.settings.server
    batcher = Batcher(lambda seqs: runtime.host.model.embed(seqs),
                      window_s=embed.batch_window_ms / 1000.0,
                      max_batch_size=embed.max_batch_size, queue_size=server.queue_size,
                      retry_after_s=server.retry_after_s, metrics=runtime.metrics,
                      registry=runtime.metrics.registry)
    api = EmbeddingsAPI(runtime, batcher, embed)
    routes.add(app, ENDPOINT, "embeddings", api.embeddings)
    openapi.attach(app, lambda: openapi.function_document(protocol))  # on first GET
    return batcher


class EmbeddingsAPI:
    def __init__(self, runtime: Runtime, batcher: Batcher, embed: EmbedSettings):
        self.rt = runtime
        self.batcher = batcher
        self.cfg = embed

    def embeddings(self, inbound: routes.Inbound) -> routes.Result:
        t0 = time.perf_counter()
        origin = inbound.origin
        req, seqs, cold = None, None, False
        try:
            engine: Embedder = self.rt.model()
            req = schema.parse(inbound.body(), model_id=self.rt.host.model_id, n_embd=engine.n_embd,
                               max_inputs=self.cfg.max_inputs)
            seqs = self._sequences(engine, req)
            pending = self.batcher.submit(seqs)
            cold = self.rt.host.take_cold_start()
            try:
                vectors = pending.wait()
            except APIError:  # shutting down
                raise
            except Exception:  # the model call failed: logged by the batcher
                raise internal_error() from None
        except APIError as err:
            self._event(origin, t0, req, seqs, status=err.status, error_code=err.code, cold=cold)
            raise
        count = _count(seqs)
        body = protocol.EmbeddingList(
            data=[protocol.Embedding(index=i, embedding=_encode(v, req.encoding_format))
                  for i, v in enumerate(vectors)],
            model=self.rt.host.model_id, usage=Usage(prompt_tokens=count, total_tokens=count))
        result = routes.Result(to_builtins(body), headers={"X-Request-Id": origin.rid})
        self._event(origin, t0, req, seqs, status=200, error_code=None, cold=cold)
        return result

    def _sequences(self, engine: Embedder, req: schema.Request) -> list[list[int]]:
        """Token ids per input; an input over the limit is a 400 naming it (or cut: TRUNCATE)."""
        seqs: list[list[int]]
        if req.tokens_given:
            seqs = cast("list[list[int]]", req.inputs)  # tokens_given: the inputs are id lists
            for i, seq in enumerate(seqs):
                if max(seq) >= engine.n_vocab:
                    raise InvalidRequest(f"'input[{i}]' has token ids >= the vocabulary size "
                                         f"{engine.n_vocab}.", param=f"input[{i}]")
        else:
            seqs = [engine.tokenize(text) for text in cast("list[str]", req.inputs)]
        limit = engine.max_input_tokens
        for i, seq in enumerate(seqs):
            if len(seq) > limit:
                if not self.cfg.truncate:
                    raise ContextLengthExceeded(
                        f"This model's maximum context length is {limit} tokens, however input "
                        f"{i} has {len(seq)} tokens. Please reduce the length of input {i}.",
                        param=f"input[{i}]")
                seqs[i] = engine.truncate(seq)
        return seqs

    def _event(self, origin: Origin, t0: float, req, seqs, *, status: int, error_code: str | None,
               cold: bool) -> None:
        count = len(req.inputs) if req is not None else 0
        texts = (req.inputs if req is not None and not req.tokens_given else None)
        if status == 200:
            self.rt.metrics.prompt_tokens.labels(model=self.rt.host.model_id).inc(_count(seqs))
        self.rt.emit_inference(origin, endpoint=ENDPOINT, status=status, error_code=error_code,
                               prompt_tokens=_count(seqs) if seqs else 0, input_count=count,
                               duration_s=time.perf_counter() - t0, cold_start=cold,
                               finish_reason=None if status == 200 else "error",
                               prompt="\n".join(texts) if texts else None)


def _count(seqs) -> int:
    return sum(len(s) for s in seqs) if seqs else 0


def _encode(vector: np.ndarray, encoding: str):
    if encoding == "base64":
        return base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")
    return vector.tolist()
