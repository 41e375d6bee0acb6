"""Anthropic's Messages API on the chat pipeline: POST /v1/messages and
/v1/messages/count_tokens (types in messages_protocol.py).

A request is translated to a typed chat request (system and text blocks to messages,
``tool_use`` to an assistant's tool calls, ``tool_result`` to tool messages, ``tools`` and
``tool_choice`` to chat's), answered by :meth:`api.GenerateAPI.run_chat`, and the chat answer
translated back: a ``message``, or the stream of Anthropic's events (``message_start``,
``content_block_start/delta/stop``, ``message_delta``, ``message_stop``, ``ping`` while the
prompt is processed). Every error on these routes, the shared checks' included, is answered in
Anthropic's shape, ``{"type": "error", "error": {"type", "message"}}`` (:func:`error_body`, set
with ``llmfn.errors.shape_errors``).
"""
from __future__ import annotations

import itertools
import json
import logging
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Literal

from flask import Flask

from llmfn import errors, routes
from llmfn.errors import APIError, InvalidRequest, internal_error
from llmfn.protocol import Model, decode, encode
from llmfn.webapp import check_model

from . import messages_protocol as mp
from . import protocol, schema

if TYPE_CHECKING:
    from .api import GenerateAPI
    from .scheduler import Generation, Outcome

log = logging.getLogger(__name__)

ROUTE = "/v1/messages"
COUNT_ROUTE = "/v1/messages/count_tokens"
ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error",
               403: "permission_error", 404: "not_found_error", 413: "request_too_large",
               429: "rate_limit_error", 500: "api_error", 503: "overloaded_error"}
"""Anthropic's error type of each status (another 4xx: invalid_request_error, 5xx: api_error)."""
STOP_REASONS: dict[str, mp.StopReason] = {"stop": "end_turn", "length": "max_tokens",
                                          "tool_calls": "tool_use"}


def register(app: Flask, api: GenerateAPI) -> None:
    """Add the Messages routes to ``app``, their errors in Anthropic's shape."""
    messages = MessagesAPI(api)
    routes.add(app, ROUTE, "messages", messages.create)
    routes.add(app, COUNT_ROUTE, "count_message_tokens", messages.count_tokens)
    errors.shape_errors(app, ROUTE, error_body)


def error_body(err: APIError) -> dict[str, Any]:
    """``err`` in Anthropic's shape."""
    kind = ERROR_TYPES.get(err.status) or (
        "invalid_request_error" if err.status < 500 else "api_error")
    return {"type": "error", "error": {"type": kind, "message": err.message}}


class MessagesAPI:
    def __init__(self, api: GenerateAPI):
        self.api = api

    def create(self, inbound: routes.Inbound) -> routes.Result:
        t0 = time.perf_counter()
        stream = False
        try:
            self.api.rt.model()  # 503 while the model loads, before the body is read
            body = inbound.body()
            stream = body.get("stream") is True
            mp.check_blocks(body)
            typed = decode(mp.MessagesRequest, body)
            chat = to_chat(typed)
        except APIError as err:
            self.api._event(inbound, t0, status=err.status, error_code=err.code,
                            stream=stream, req=None, api="messages")
            raise
        jobs: list[Generation] = []
        answer = self.api.run_chat(inbound, chat, api="messages", jobs=jobs)
        if isinstance(answer, protocol.ChatCompletion):
            result = routes.Result(to_message(answer, inbound.origin.rid, jobs[0].outcome,
                                              typed.stop_sequences or []))
        else:
            result = routes.stream(events(answer, inbound.origin.rid, self.api.rt.host.model_id,
                                          jobs[0], typed.stop_sequences or []))
        result.headers["X-Request-Id"] = inbound.origin.rid
        return result

    def count_tokens(self, inbound: routes.Inbound) -> routes.Result:
        """The prompt's tokens as /v1/messages would generate from them (the chat template,
        the tools' system text): the same rendering and tokenizer."""
        engine = self.api.rt.model()
        body = inbound.body()
        mp.check_blocks(body)
        typed = decode(mp.CountTokensRequest, body)
        chat = to_chat(typed)
        check_model({"model": chat.model}, self.api.rt.host.model_id)
        req = schema.chat_request(chat, self.api.rt.settings.model.default_max_tokens,
                                  self.api.scheduler.capacity)
        return routes.Result(mp.TokenCount(input_tokens=len(self.api._tokens(engine, req))))


# -- Anthropic -> chat ----------------------------------------------------------------------------
class ChatRequest(protocol.ChatCompletionRequest, kw_only=True):
    """A chat request translated from a Messages request: chat's, and ``top_k`` (not a chat
    parameter; schema.py passes it to the sampler)."""
    top_k: int | None = None


def to_chat(req: mp.CountTokensRequest) -> ChatRequest:
    """The chat request that answers ``req`` (a 400 naming what chat cannot express)."""
    for key, why in mp.REJECTED_WHY.items():
        if getattr(req, key, None) is not None:
            raise InvalidRequest(f"'{key}' is not supported: {why}.", param=key)
    messages: list[protocol.Message] = []
    if req.system is not None:
        system = req.system if isinstance(req.system, str) else "\n".join(
            b.text for b in req.system)
        messages.append(protocol.Message(role="system", content=system))
    for i, msg in enumerate(req.messages):
        messages += _messages(msg, f"messages[{i}]")
    tools = [protocol.Tool(type="function", function=protocol.FunctionDefinition(
        name=t.name, description=t.description, parameters=t.input_schema))
        for t in req.tools or []]
    out = ChatRequest(model=req.model, messages=messages, tools=tools or None,
                      tool_choice=_tool_choice(req.tool_choice, tools),
                      response_format=_format(req))
    if isinstance(req, mp.MessagesRequest):
        out.max_tokens = req.max_tokens
        out.stop = req.stop_sequences or None
        out.temperature = req.temperature
        out.top_p = req.top_p
        out.stream = bool(req.stream)
        out.top_k = req.top_k
    return out


def _messages(msg: mp.MessageParam, where: str) -> list[protocol.Message]:
    """One Anthropic message as chat messages: a user's tool results become tool messages
    (before its text), an assistant's tool uses its tool calls."""
    if isinstance(msg.content, str):
        return [protocol.Message(role=msg.role, content=msg.content)]
    text: list[str] = []
    calls: list[protocol.ToolCall] = []
    results: list[protocol.Message] = []
    for j, block in enumerate(msg.content):
        at = f"{where}.content[{j}]"
        if isinstance(block, mp.TextBlock):
            text.append(block.text)
        elif isinstance(block, mp.ToolUseBlock):
            if msg.role != "assistant":
                raise InvalidRequest(f"'{at}': tool_use blocks belong in assistant messages.",
                                     param=at)
            calls.append(protocol.ToolCall(id=block.id, function=protocol.FunctionCall(
                name=block.name, arguments=json.dumps(block.input))))
        else:
            if msg.role != "user":
                raise InvalidRequest(f"'{at}': tool_result blocks belong in user messages.",
                                     param=at)
            content = block.content
            result = content if isinstance(content, str) else "".join(
                b.text for b in content or [])
            if block.is_error:
                result = f"Error: {result}"
            results.append(protocol.Message(role="tool", content=result,
                                            tool_call_id=block.tool_use_id))
    if msg.role == "assistant":
        return [protocol.Message(role="assistant", content="".join(text),
                                 tool_calls=calls or None)]
    return results + ([protocol.Message(role="user", content="".join(text))]
                      if text or not results else [])


def _format(req: mp.CountTokensRequest) -> protocol.ResponseFormatJSONSchema | None:
    """``output_config.format`` (or ``output_format``) as chat's ``json_schema`` format."""
    fmt = req.output_config.format if req.output_config is not None else None
    if fmt is None:
        fmt = req.output_format
    if fmt is None:
        return None
    return protocol.ResponseFormatJSONSchema(json_schema=protocol.JSONSchemaFormat(
        name="output", schema=fmt.schema, strict=True))


def _tool_choice(choice: mp.ToolChoice | None, tools: list[protocol.Tool]
                 ) -> Literal["none", "auto", "required"] | protocol.NamedToolChoice | None:
    """Anthropic's auto / any / tool / none as chat's auto / required / named / none."""
    if choice is None:
        return None
    if isinstance(choice, mp.ToolChoiceNone):
        return "none"
    if not tools:
        raise InvalidRequest("'tool_choice' needs 'tools'.", param="tool_choice")
    if isinstance(choice, mp.ToolChoiceAuto):
        return "auto"
    if isinstance(choice, mp.ToolChoiceAny):
        return "required"
    if choice.name not in {t.function.name for t in tools}:
        raise InvalidRequest(f"'tool_choice.name' {choice.name!r} is not one of 'tools'.",
                             param="tool_choice.name")
    return protocol.NamedToolChoice(function=protocol.ToolChoiceFunction(name=choice.name))


# -- chat -> Anthropic ----------------------------------------------------------------------------
def _stop(finish: str | None, stop_sequence: str | None) -> mp.StopReason | None:
    if finish == "stop" and stop_sequence is not None:
        return "stop_sequence"
    return STOP_REASONS.get(finish or "")


def _tool_use_id(call_id: str) -> str:
    """Anthropic's id form (``toolu_...``) for a chat call id (``call_...``)."""
    return "toolu_" + call_id.removeprefix("call_")


def usage(chat: protocol.CompletionUsage) -> mp.Usage:
    """Anthropic's usage: ``input_tokens`` are the prompt tokens not read from the cache
    (Anthropic counts cache reads apart: the prompt is the sum of the three)."""
    cached = _cached(chat)
    return mp.Usage(input_tokens=chat.prompt_tokens - cached,
                    output_tokens=chat.completion_tokens, cache_creation_input_tokens=0,
                    cache_read_input_tokens=cached)


def _cached(chat: protocol.CompletionUsage) -> int:
    """The prompt tokens the scheduler reused (``prompt_tokens_details.cached_tokens``)."""
    details = getattr(chat, "prompt_tokens_details", None)
    return int(getattr(details, "cached_tokens", 0) or 0)


def matched_stop(outcome: Outcome | None, stops: list[str]) -> str | None:
    """The request's stop sequence that ended ``outcome`` (not the chat template's end)."""
    matched = outcome.stop_sequence if outcome is not None else None
    return matched if matched in stops else None


def to_message(chat: protocol.ChatCompletion, rid: str, outcome: Outcome | None,
               stops: list[str]) -> mp.AnthropicMessage:
    """The chat answer as Anthropic's message."""
    choice = chat.choices[0]
    content: list[mp.TextOut | mp.ToolUseOut] = []
    if choice.message.content:
        content.append(mp.TextOut(text=choice.message.content))
    for call in choice.message.tool_calls or []:
        content.append(mp.ToolUseOut(id=_tool_use_id(call.id), name=call.function.name,
                                     input=json.loads(call.function.arguments)))
    matched = matched_stop(outcome, stops)
    return mp.AnthropicMessage(id=f"msg_{rid}", model=chat.model, content=content,
                      stop_reason=_stop(choice.finish_reason, matched),
                      stop_sequence=matched, usage=usage(chat.usage))


def sse(event: Model) -> bytes:
    """One SSE event as Anthropic writes it: ``event: <type>`` and its JSON."""
    data = encode(event)
    return b"event: " + json.loads(data)["type"].encode() + b"\ndata: " + data + b"\n\n"


def events(chunks: Iterator[Any], rid: str, model: str, job: Generation,
           stops: list[str]) -> Iterator[bytes]:
    """Anthropic's stream from the chat chunks (closing it closes them: the generation is
    cancelled); an error after the start is an ``error`` event. ``message_start`` counts the
    whole prompt in ``input_tokens`` (what the slot reuses is known later); ``message_delta``
    has the final split (``input_tokens``, ``cache_read_input_tokens``), as clients merge it."""
    from .api import KeepAlive

    state = _Blocks()
    finish: str | None = None
    final: protocol.CompletionUsage | None = None
    try:
        # the role chunk comes at once: the chat stream is started before the first event, so
        # a client that leaves after message_start closes it and cancels the generation
        first = next(chunks, None)
        yield sse(mp.MessageStart(message=mp.AnthropicMessage(  # the split comes at the end
            id=f"msg_{rid}", model=model, content=[], stop_reason=None, stop_sequence=None,
            usage=mp.Usage(input_tokens=len(job.tokens), output_tokens=0))))
        for chunk in itertools.chain([] if first is None else [first], chunks):
            if isinstance(chunk, KeepAlive):
                yield sse(mp.Ping())
                continue
            if chunk.usage:
                final = chunk.usage
            for choice in chunk.choices[:1]:
                delta = choice.delta
                if isinstance(delta.content, str) and delta.content:
                    yield from state.text(delta.content)
                if isinstance(delta.tool_calls, list):
                    for call in delta.tool_calls:
                        yield from state.tool_use(call)
                if choice.finish_reason is not None:
                    finish = choice.finish_reason
    except APIError as err:
        yield sse(mp.ErrorEvent(error=mp.AnthropicErrorDetail(**error_body(err)["error"])))
        return
    except Exception:
        log.exception("streaming a message failed")
        yield sse(mp.ErrorEvent(error=mp.AnthropicErrorDetail(**error_body(internal_error())[
            "error"])))
        return
    finally:  # also when the client left (GeneratorExit): the generation is cancelled
        close = getattr(chunks, "close", None)
        if close is not None:
            close()
    yield from state.close()
    matched = matched_stop(job.outcome, stops)
    done = usage(final) if final is not None else mp.Usage(input_tokens=0, output_tokens=0)
    yield sse(mp.MessageDelta(
        delta=mp.MessageDeltaBody(stop_reason=_stop(finish, matched), stop_sequence=matched),
        usage=mp.DeltaUsage(output_tokens=done.output_tokens, input_tokens=done.input_tokens,
                            cache_creation_input_tokens=done.cache_creation_input_tokens,
                            cache_read_input_tokens=done.cache_read_input_tokens)))
    yield sse(mp.MessageStop())


class _Blocks:
    """The content blocks of a stream: their indexes, the open one, the first ping."""

    def __init__(self):
        self.count = 0
        self.open_text = False

    def _start(self, block: mp.TextOut | mp.ToolUseOut) -> Iterator[bytes]:
        yield sse(mp.ContentBlockStart(index=self.count, content_block=block))
        if self.count == 0:  # as Anthropic's streams have it
            yield sse(mp.Ping())

    def text(self, text: str) -> Iterator[bytes]:
        if not self.open_text:
            yield from self._start(mp.TextOut(text=""))
            self.open_text = True
        yield sse(mp.ContentBlockDelta(index=self.count, delta=mp.TextDelta(text=text)))

    def tool_use(self, call: protocol.ToolCallDelta) -> Iterator[bytes]:
        yield from self.close()
        yield from self._start(mp.ToolUseOut(id=_tool_use_id(call.id), name=call.function.name,
                                             input={}))
        yield sse(mp.ContentBlockDelta(index=self.count, delta=mp.InputJSONDelta(
            partial_json=call.function.arguments)))
        yield sse(mp.ContentBlockStop(index=self.count))
        self.count += 1

    def close(self) -> Iterator[bytes]:
        if self.open_text:
            yield sse(mp.ContentBlockStop(index=self.count))
            self.count += 1
            self.open_text = False
