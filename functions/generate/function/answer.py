"""The shapes of generate's answers, each built by one function: OpenAI's completion objects,
their SSE chunks, choices with text, messages, tool calls and log-probabilities.

One :class:`Call` per admitted request; its ``choices`` (``n``, or ``best_of`` candidates) are
generations of the scheduler.
"""
from __future__ import annotations

import json

from . import structured
from .scheduler import Generation, Outcome, TokenLogprob


class Call:
    """The state of one admitted request while it is answered."""

    def __init__(self, *, origin, t0: float, chat: bool, req, prompt_tokens: int,
                 jobs: list[Generation], cold: bool, model: str, echo_text: str = ""):
        self.origin, self.t0, self.chat, self.req = origin, t0, chat, req
        self.rid, self.created = origin.rid, origin.created
        self.prompt_tokens, self.jobs = prompt_tokens, jobs
        self.cold, self.model = cold, model
        self.echo_text = echo_text  # completions with echo: the prompt, before each text
        self.prompt_text: str | None = None  # only with EVENTS_INCLUDE_TEXT
        self.events = jobs[0].events  # shared by the choices

    @property
    def route(self) -> str:
        return "/v1/chat/completions" if self.chat else "/v1/completions"

    @property
    def buffered(self) -> bool:
        """Tool calls are only known at the end: stream them (and free text that might have
        been one) in one piece."""
        return self.chat and self.req.output.may_call

    def head(self, *, stream: bool) -> dict:
        """id, object, created and model: what every body and chunk of this request carries."""
        if self.chat:
            head = {"id": f"chatcmpl-{self.rid}",
                    "object": "chat.completion.chunk" if stream else "chat.completion"}
        else:
            head = {"id": f"cmpl-{self.rid}", "object": "text_completion"}
        head.update({"created": self.created, "model": self.model})
        return head

    # -- whole answers --------------------------------------------------------------------
    def response(self, outcomes: list[Outcome]) -> dict:
        """The answer of a non-streamed request; ``outcomes`` are the returned choices."""
        choices = [self.choice(i, o) for i, o in enumerate(outcomes)]
        return {**self.head(stream=False), "choices": choices, "usage": self.usage()}

    def choice(self, index: int, outcome: Outcome) -> dict:
        logprobs = self.logprobs(outcome.tokens or [], self.echo_text) \
            if self.req.params.logprobs is not None and outcome.tokens is not None else None
        if not self.chat:
            return {"text": self.echo_text + outcome.text, "index": index,
                    "logprobs": logprobs, "finish_reason": finish(outcome)}
        calls = self.tool_calls(outcome, index)
        message = {"role": "assistant", "content": None if calls else outcome.text,
                   "refusal": None}
        if calls:
            message["tool_calls"] = calls
        return {"index": index, "message": message, "logprobs": logprobs,
                "finish_reason": "tool_calls" if calls else finish(outcome)}

    def tool_calls(self, outcome: Outcome, index: int) -> list[dict] | None:
        if outcome.finish_reason != "stop":
            return None
        return structured.tool_calls(outcome.text, self.req.output, f"{self.rid}\x1f{index}")

    def usage(self, completion_tokens: int | None = None) -> dict:
        done = completion_tokens if completion_tokens is not None else sum(
            j.outcome.completion_tokens for j in self.jobs if j.outcome is not None)
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": done,
                "total_tokens": self.prompt_tokens + done}

    def logprobs(self, tokens: list[TokenLogprob], before: str = "") -> dict:
        """OpenAI's logprobs object: chat ``{content: [...]}``, completions' four arrays."""
        if self.chat:
            return {"content": [_chat_entry(t) for t in tokens], "refusal": None}
        offsets, at = [], len(before)
        for t in tokens:
            offsets.append(at)
            at += len(t.piece.decode("utf-8", errors="replace"))
        return {"tokens": [_text(t.piece) for t in tokens],
                "token_logprobs": [t.logprob for t in tokens],
                "top_logprobs": [{_text(p): lp for _, p, lp in t.top} for t in tokens],
                "text_offset": offsets}

    # -- SSE chunks -----------------------------------------------------------------------
    def chunk(self, index: int, delta, finish_reason: str | None = None,
              tokens: list[TokenLogprob] | None = None) -> bytes:
        """One SSE chunk of choice ``index``: ``delta`` is new text (or a ready chat delta)."""
        logprobs = self.logprobs(tokens) if tokens else None
        if self.chat:
            delta = {"content": delta} if isinstance(delta, str) else delta
            choice = {"index": index, "delta": delta, "logprobs": logprobs,
                      "finish_reason": finish_reason}
        else:
            choice = {"text": delta, "index": index, "logprobs": logprobs,
                      "finish_reason": finish_reason}
        body = {**self.head(stream=True), "choices": [choice]}
        if self.req.include_usage:
            body["usage"] = None
        return sse_data(body)

    def last_chunks(self, index: int, outcome: Outcome, text: str) -> list[bytes]:
        """The end of choice ``index``: a buffered answer, then its finish reason."""
        out = []
        calls = self.tool_calls(outcome, index) if self.buffered else None
        if calls:
            out.append(self.chunk(index, {"tool_calls": [{"index": i, **c}
                                                         for i, c in enumerate(calls)]}))
        elif self.buffered and text:
            out.append(self.chunk(index, text, tokens=outcome.tokens))
        out.append(self.chunk(index, {} if self.chat else "",
                              "tool_calls" if calls else finish(outcome)))
        return out

    def usage_chunk(self) -> bytes:
        """The last chunk with `stream_options.include_usage`: no choices, the usage."""
        return sse_data({**self.head(stream=True), "choices": [], "usage": self.usage()})


def finish(outcome: Outcome) -> str:
    """The finish_reason a client sees: a cancelled generation (its client left, or shutdown)
    ended like a stop; the event keeps "cancelled"."""
    return "stop" if outcome.finish_reason == "cancelled" else outcome.finish_reason


def _text(piece: bytes) -> str:
    return piece.decode("utf-8", errors="replace")


def _chat_entry(t: TokenLogprob) -> dict:
    return {"token": _text(t.piece), "logprob": t.logprob, "bytes": list(t.piece),
            "top_logprobs": [{"token": _text(p), "logprob": lp, "bytes": list(p)}
                             for _, p, lp in t.top]}


def sse_data(body: dict) -> bytes:
    return b"data: " + json.dumps(body, ensure_ascii=False).encode() + b"\n\n"
