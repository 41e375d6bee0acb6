"""generate's answers, each built by one function from the protocol's types (protocol.py):
OpenAI's completion objects, their chunks (typed; api.py writes them as SSE), choices with
text, messages, tool calls and log-probabilities.

One :class:`Call` per admitted request; its ``choices`` (``n``, or ``best_of`` candidates) are
generations of the scheduler.
"""
from __future__ import annotations

import json
from typing import Any, cast

from llmfn.protocol import UNSET, Model, to_builtins

from . import structured
from .protocol import (
    ChatChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatLogprobs,
    ChatMessage,
    ChatTokenLogprob,
    ChunkChoice,
    Completion,
    CompletionChoice,
    CompletionChunk,
    CompletionLogprobs,
    CompletionUsage,
    Delta,
    FinishReason,
    FunctionCallOut,
    PromptTokensDetails,
    ToolCallDelta,
    ToolCallOut,
    TopLogprob,
)
from .scheduler import Generation, Outcome, TokenLogprob


class Call:
    """The state of one admitted request while it is answered."""

    def __init__(self, *, origin, t0: float, chat: bool, req, prompt_tokens: int,
                 jobs: list[Generation], cold: bool, model: str, echo_text: str = "",
                 route: str | None = None, api: str | None = None):
        self.origin, self.t0, self.chat, self.req = origin, t0, chat, req
        self.route = route or ("/v1/chat/completions" if chat else "/v1/completions")
        self.api = api or ("chat" if chat else "completions")  # the inference event's api
        self.rid, self.created = origin.rid, origin.created
        self.prompt_tokens, self.jobs = prompt_tokens, jobs
        self.cold, self.model = cold, model
        self.echo_text = echo_text  # completions with echo: the prompt, before each text
        self.prompt_text: str | None = None  # only with EVENTS_INCLUDE_TEXT
        self.events = jobs[0].events  # shared by the choices
        self.first_finish: str | None = None  # the finish_reason choice 0 was answered with

    @property
    def buffered(self) -> bool:
        """Tool calls are only known at the end: stream them (and free text that might have
        been one) in one piece."""
        return self.chat and self.req.output.may_call

    def head(self) -> dict[str, Any]:
        """id, created and model: what every body and chunk of this request carries."""
        prefix = "chatcmpl" if self.chat else "cmpl"
        return {"id": f"{prefix}-{self.rid}", "created": self.created, "model": self.model}

    # -- whole answers --------------------------------------------------------------------
    def response(self, outcomes: list[Outcome]) -> Completion | ChatCompletion:
        """The answer of a non-streamed request; ``outcomes`` are the returned choices."""
        usage = self.usage()
        if self.chat:
            chat = [self.chat_choice(i, o) for i, o in enumerate(outcomes)]
            self.first_finish = chat[0].finish_reason
            return ChatCompletion(choices=chat, usage=usage,
                                  **self.head())
        choices = [CompletionChoice(text=self.echo_text + o.text, index=i,
                                    logprobs=self.completion_logprobs(o.tokens, self.echo_text)
                                    if self.req.params.logprobs is not None else None,
                                    finish_reason=finish(o))
                   for i, o in enumerate(outcomes)]
        self.first_finish = choices[0].finish_reason
        return Completion(choices=choices, usage=usage, **self.head())

    def chat_choice(self, index: int, outcome: Outcome) -> ChatChoice:
        logprobs = self.chat_logprobs(outcome.tokens) \
            if self.req.params.logprobs is not None and outcome.tokens is not None else None
        calls = self.tool_calls(outcome, index)
        message = ChatMessage(content=None, tool_calls=calls) if calls else ChatMessage(
            content=outcome.text)
        return ChatChoice(index=index, message=message, logprobs=logprobs,
                          finish_reason="tool_calls" if calls else finish(outcome))

    def tool_calls(self, outcome: Outcome, index: int) -> list[ToolCallOut] | None:
        if outcome.finish_reason != "stop":
            return None
        calls = structured.tool_calls(outcome.text, self.req.output, f"{self.rid}\x1f{index}")
        return None if calls is None else [
            ToolCallOut(id=c["id"], function=FunctionCallOut(**c["function"]))
            for c in calls]

    def usage(self, completion_tokens: int | None = None) -> CompletionUsage:
        done = completion_tokens if completion_tokens is not None else sum(
            j.outcome.completion_tokens for j in self.jobs if j.outcome is not None)
        return CompletionUsage(prompt_tokens=self.prompt_tokens, completion_tokens=done,
                               total_tokens=self.prompt_tokens + done,
                               prompt_tokens_details=PromptTokensDetails(
                                   cached_tokens=self.cached_tokens()) if self.chat else UNSET)

    def cached_tokens(self) -> int:
        """Prompt tokens no choice computed again (their KV kept in its slot): the fewest
        over the choices, as usage counts the prompt once."""
        return min((j.outcome.cached_tokens for j in self.jobs if j.outcome is not None),
                   default=0)

    @staticmethod
    def completion_logprobs(tokens: list[TokenLogprob] | None,
                            before: str = "") -> CompletionLogprobs | None:
        """Completions' four arrays; offsets count from the end of ``before``."""
        if tokens is None:
            return None
        offsets, at = [], len(before)
        for t in tokens:
            offsets.append(at)
            at += len(_text(t.piece))
        return CompletionLogprobs(tokens=[_text(t.piece) for t in tokens],
                                  token_logprobs=[t.logprob for t in tokens],
                                  top_logprobs=[{_text(p): lp for _, p, lp in t.top}
                                                for t in tokens],
                                  text_offset=offsets)

    @staticmethod
    def chat_logprobs(tokens: list[TokenLogprob]) -> ChatLogprobs:
        return ChatLogprobs(content=[_chat_entry(t) for t in tokens])

    # -- SSE chunks -----------------------------------------------------------------------
    def chunk(self, index: int, delta: str | Delta, finish_reason: FinishReason | None = None,
              tokens: list[TokenLogprob] | None = None) -> ChatCompletionChunk | CompletionChunk:
        """One chunk of choice ``index``: ``delta`` is new text (or a ready chat delta)."""
        if self.chat:
            chat_logprobs = self.chat_logprobs(tokens) if tokens else None
            delta = Delta(content=delta) if isinstance(delta, str) else delta
            return ChatCompletionChunk(
                **self.head(),
                choices=[ChunkChoice(index=index, delta=delta, logprobs=chat_logprobs,
                                     finish_reason=finish_reason)],
                usage=None if self.req.include_usage else UNSET)
        assert isinstance(delta, str)
        logprobs = self.completion_logprobs(tokens) if tokens else None
        return CompletionChunk(
            **self.head(),
            choices=[CompletionChoice(text=delta, index=index, logprobs=logprobs,
                                      finish_reason=finish_reason)])

    def last_chunks(self, index: int, outcome: Outcome,
                    text: str) -> list[ChatCompletionChunk | CompletionChunk]:
        """The end of choice ``index``: a buffered answer, then its finish reason."""
        out = []
        calls = self.tool_calls(outcome, index) if self.buffered else None
        if calls:
            out.append(self.chunk(index, Delta(tool_calls=[
                ToolCallDelta(index=i, id=c.id, type=c.type, function=c.function)
                for i, c in enumerate(calls)])))
        elif self.buffered and text:
            out.append(self.chunk(index, text, tokens=outcome.tokens))
        reason: FinishReason = "tool_calls" if calls else finish(outcome)
        if index == 0:
            self.first_finish = reason
        out.append(self.chunk(index, Delta() if self.chat else "", reason))
        return out

    def usage_chunk(self) -> ChatCompletionChunk | CompletionChunk:
        """The last chunk with `stream_options.include_usage`: no choices, the usage."""
        if self.chat:
            return ChatCompletionChunk(**self.head(), choices=[], usage=self.usage())
        return CompletionChunk(**self.head(), choices=[], usage=self.usage())


def finish(outcome: Outcome) -> FinishReason:
    """The finish_reason a client sees: a cancelled generation (its client left, or shutdown)
    ended like a stop; the event keeps "cancelled"."""
    return "stop" if outcome.finish_reason == "cancelled" else cast(FinishReason,
                                                                    outcome.finish_reason)


def _text(piece: bytes) -> str:
    return piece.decode("utf-8", errors="replace")


def _chat_entry(t: TokenLogprob) -> ChatTokenLogprob:
    return ChatTokenLogprob(token=_text(t.piece), logprob=t.logprob, bytes=list(t.piece),
                            top_logprobs=[TopLogprob(token=_text(p), logprob=lp, bytes=list(p))
                                          for _, p, lp in t.top])


def sse_data(body: Model | dict) -> bytes:
    """One SSE ``data:`` event (written as json.dumps does, as the recorded streams have it)."""
    return b"data: " + json.dumps(to_builtins(body), ensure_ascii=False).encode() + b"\n\n"
