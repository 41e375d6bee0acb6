"""Text generation on llama-cpp-python: prompt rendering, token counting and a token loop.

We drive ``Llama.generate`` ourselves instead of ``create_completion`` so that tokens are counted
as they are produced (llama-cpp-python's usage re-tokenizes the text and can exceed max_tokens),
a cancelled request stops within one token, and time to first token is measured at the token.
All methods that touch the model run on the ModelWorker thread.
"""
from __future__ import annotations

import logging
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import llama_cpp
from llama_cpp.llama_chat_format import Jinja2ChatFormatter

from llmfn.llama_backend import ensure_cpu_backend
from llmfn.settings import ModelSettings

log = logging.getLogger(__name__)

# llama-server's sampling defaults, so both servers do the same work per token.
TOP_K = 40
MIN_P = 0.05


def load_llama(path: str, model: ModelSettings) -> "Engine":
    """Load the GGUF at ``path`` (called by the ModelHost on its loader thread)."""
    ensure_cpu_backend()
    llm = llama_cpp.Llama(model_path=path, n_ctx=model.n_ctx, n_batch=model.n_batch,
                          n_ubatch=model.n_ubatch, n_threads=model.n_threads or None,
                          verbose=False)
    return Engine(llm)


@dataclass
class Params:
    """Validated sampling parameters of one request."""
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    stop: list[str] = field(default_factory=list)
    seed: int | None = None


@dataclass
class Outcome:
    """What one generation produced; tokens are counted as sampled."""
    completion_tokens: int = 0
    finish_reason: str = "length"
    ttft_s: float | None = None
    generation_s: float = 0.0
    text: str = ""


class Engine:
    """One loaded model: tokenization, the chat template from the GGUF, and the token loop."""

    def __init__(self, llm: llama_cpp.Llama):
        self.llm = llm
        self.n_ctx = llm.n_ctx()
        eos, bos = llm.token_eos(), llm.token_bos()
        self._eos_text = llm._model.token_get_text(eos) if eos != -1 else ""
        bos_text = llm._model.token_get_text(bos) if bos != -1 else ""
        template = llm.metadata.get("tokenizer.chat_template")
        self._chat = (Jinja2ChatFormatter(template=template, eos_token=self._eos_text,
                                          bos_token=bos_text) if template else None)
        self._vocab = llama_cpp.llama_model_get_vocab(llm.model)

    @property
    def has_chat_template(self) -> bool:
        return self._chat is not None

    def tokenize_prompt(self, prompt: str) -> list[int]:
        """Tokens of a plain completion prompt (BOS added as the model's vocab wants)."""
        return self.llm.tokenize(prompt.encode("utf-8"), add_bos=True, special=False)

    def tokenize_chat(self, messages: list[dict]) -> tuple[list[int], list[str]]:
        """Tokens of the chat rendered with the GGUF's template, and the template's stop strings."""
        if self._chat is None:
            raise ValueError("model has no chat template")
        rendered = self._chat(messages=messages)
        tokens = self.llm.tokenize(rendered.prompt.encode("utf-8"), add_bos=False, special=True)
        stops = [s for s in (rendered.stop if isinstance(rendered.stop, list) else [rendered.stop])
                 if s]
        return tokens, stops

    def generate(self, tokens: list[int], params: Params, cancelled: threading.Event,
                 on_text: Callable[[str], None]) -> Outcome:
        """Sample up to ``max_tokens``; call ``on_text`` with each new piece of text."""
        out = Outcome()
        t0 = time.perf_counter()
        seed = params.seed if params.seed is not None else random.getrandbits(32)
        self.llm.set_seed(seed & 0xFFFFFFFF)
        pending = _StopScanner(params.stop)
        raw = bytearray()
        decoded = 0
        text_parts: list[str] = []
        gen = self.llm.generate(tokens, top_k=TOP_K, top_p=params.top_p, min_p=MIN_P,
                                temp=params.temperature, repeat_penalty=1.0)
        try:
            for token in gen:
                if out.ttft_s is None:
                    out.ttft_s = time.perf_counter() - t0
                if cancelled.is_set():
                    out.finish_reason = "cancelled"
                    break
                if llama_cpp.llama_vocab_is_eog(self._vocab, token):
                    out.finish_reason = "stop"
                    break
                out.completion_tokens += 1
                raw += self.llm.detokenize([token])
                piece, decoded = _decode_complete(raw, decoded)
                emit, hit = pending.feed(piece)
                if emit:
                    text_parts.append(emit)
                    on_text(emit)
                if hit:
                    out.finish_reason = "stop"
                    break
                if out.completion_tokens >= params.max_tokens:
                    out.finish_reason = "length"
                    break
                if cancelled.is_set():
                    out.finish_reason = "cancelled"
                    break
        finally:
            gen.close()
        if out.finish_reason == "length" or (out.finish_reason == "stop" and not pending.hit):
            tail = pending.flush()
            if tail:
                text_parts.append(tail)
                on_text(tail)
        out.generation_s = time.perf_counter() - t0
        out.text = "".join(text_parts)
        return out


def _decode_complete(raw: bytearray, start: int) -> tuple[str, int]:
    """Decode the complete UTF-8 characters of ``raw[start:]`` (a multi-byte char may be split)."""
    end = len(raw)
    for back in range(0, min(4, end - start) + 1):
        try:
            return raw[start:end - back].decode("utf-8"), end - back
        except UnicodeDecodeError:
            continue
    return raw[start:end].decode("utf-8", errors="replace"), end


class _StopScanner:
    """Holds back text that may be the start of a stop string; reports a full match."""

    def __init__(self, stops: list[str]):
        self.stops = [s for s in stops if s]
        self.buf = ""
        self.hit = False

    def feed(self, piece: str) -> tuple[str, bool]:
        self.buf += piece
        if not self.stops:
            out, self.buf = self.buf, ""
            return out, False
        first = min((i for i in (self.buf.find(s) for s in self.stops) if i >= 0), default=-1)
        if first >= 0:
            out, self.buf, self.hit = self.buf[:first], "", True
            return out, True
        keep = 0
        for s in self.stops:
            for k in range(min(len(s) - 1, len(self.buf)), 0, -1):
                if self.buf.endswith(s[:k]):
                    keep = max(keep, k)
                    break
        cut = len(self.buf) - keep
        out, self.buf = self.buf[:cut], self.buf[cut:]
        return out, False

    def flush(self) -> str:
        out, self.buf = self.buf, ""
        return out
