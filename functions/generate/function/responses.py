"""POST /v1/responses: OpenAI's Responses API on the chat pipeline (api.GenerateAPI.run_chat).

A request is translated to a chat request (``instructions`` a system message first, ``input``
items chat messages, function tools chat tools, ``text.format`` chat's ``response_format``:
the same structured-output engine); the chat answer back to a ``response`` object, or its
chunks to the typed event stream (``sequence_number`` from 0 with no gaps). Stateless: what
needs a stored response is a 400 saying a scaled-to-zero function keeps no state. Errors keep
OpenAI's shape; a 400 names the Responses parameter or item (``input[2]``,
``max_output_tokens``, ``text.format``), not chat's.
"""
from __future__ import annotations

import itertools
import json
import logging
import re
import time
from collections.abc import Iterator
from contextlib import closing
from typing import TYPE_CHECKING, Any, Literal

from flask import Flask

from llmfn import routes
from llmfn.errors import APIError, InvalidRequest, internal_error
from llmfn.protocol import Model, decode, to_builtins

from . import protocol
from . import responses_protocol as rp

if TYPE_CHECKING:
    from .api import ChatChunks, GenerateAPI

log = logging.getLogger(__name__)

ROUTE = "/v1/responses"


def register(app: Flask, api: GenerateAPI) -> None:
    routes.add(app, ROUTE, "responses", ResponsesAPI(api).create)


class ResponsesAPI:
    def __init__(self, api: GenerateAPI):
        self.api = api

    def create(self, inbound: routes.Inbound) -> routes.Result:
        t0 = time.perf_counter()
        stream = False
        places: list[str] = []
        try:
            self.api.rt.model()  # 503 while the model loads, before the body is read
            body = inbound.body()
            stream = body.get("stream") is True
            req = decode(rp.ResponseRequest, body)
            chat = to_chat(req, places)
        except APIError as err:
            self.api._event(inbound, t0, status=err.status, error_code=err.code,
                            stream=stream, req=None, api="responses")
            raise
        try:
            answer = self.api.run_chat(inbound, chat, api="responses")
        except APIError as err:
            raise renamed(err, places) from None
        shell = Shell(req, inbound.origin.rid, inbound.origin.created,
                      self.api.rt.host.model_id)
        if isinstance(answer, protocol.ChatCompletion):
            result = routes.Result(shell.response(output(answer, shell.rid), answer.usage,
                                                  answer.choices[0].finish_reason))
        else:
            result = routes.stream(events(answer, shell))
        result.headers["X-Request-Id"] = inbound.origin.rid
        return result


# -- Responses -> chat ----------------------------------------------------------------------------
def to_chat(req: rp.ResponseRequest, places: list[str]) -> protocol.ChatCompletionRequest:
    """The chat request answering ``req``; ``places`` gets each chat message's place in
    ``req`` (``instructions``, ``input[3]``) to name in a 400."""
    _refuse_state(req)
    messages: list[protocol.Message] = []
    if req.instructions:
        messages.append(protocol.Message(role="system", content=req.instructions))
        places.append("instructions")
    if isinstance(req.input, str):
        messages.append(protocol.Message(role="user", content=req.input))
        places.append("input")
    else:
        for i, item in enumerate(req.input):
            _add_item(messages, places, item, f"input[{i}]")
    if not messages:
        raise InvalidRequest("'input' must hold at least one message.", param="input")
    tools = [_tool(t, f"tools[{i}]") for i, t in enumerate(req.tools or [])]
    return protocol.ChatCompletionRequest(
        model=req.model, messages=messages, max_tokens=req.max_output_tokens,
        temperature=req.temperature, top_p=req.top_p, presence_penalty=req.presence_penalty,
        frequency_penalty=req.frequency_penalty, stream=bool(req.stream),
        tools=tools or None, tool_choice=_tool_choice(req.tool_choice, tools),
        parallel_tool_calls=req.parallel_tool_calls, response_format=_format(req.text))


def _refuse_state(req: rp.ResponseRequest) -> None:
    """A 400 for what needs stored state, or what is not available, naming the parameter."""
    if req.store:
        raise InvalidRequest(f"'store': true is not supported: {rp.STATELESS}.", param="store")
    if req.background:
        raise InvalidRequest(f"'background': true is not supported: {rp.STATELESS}.",
                             param="background")
    for key, why in rp.REJECTED_WHY.items():
        value = getattr(req, key)
        if value is not None and not (key == "top_logprobs" and value == 0):
            raise InvalidRequest(f"'{key}' is not supported: {why}.", param=key)


def _add_item(messages: list[protocol.Message], places: list[str], item: Any,
              where: str) -> None:
    """One ``input`` item as chat messages: consecutive function calls become one assistant
    message's tool calls (after its text, if it has some)."""
    kind = item.get("type", "message") if isinstance(item, dict) else None
    if kind == "message":
        msg = decode(rp.InputMessage, item, at=where)
        messages.append(protocol.Message(role=msg.role, content=_text(msg.content, where)))
        places.append(where)
    elif kind == "function_call":
        call = decode(rp.FunctionCallItem, item, at=where)
        tool_call = protocol.ToolCall(id=call.call_id, function=protocol.FunctionCall(
            name=call.name, arguments=call.arguments))
        last = messages[-1] if messages else None
        if last is not None and last.role == "assistant" and (
                last.tool_calls is not None or places[-1].startswith("input")):
            last.tool_calls = [*(last.tool_calls or []), tool_call]
        else:
            messages.append(protocol.Message(role="assistant", content=None,
                                             tool_calls=[tool_call]))
            places.append(where)
    elif kind == "function_call_output":
        out = decode(rp.FunctionCallOutputItem, item, at=where)
        messages.append(protocol.Message(role="tool", tool_call_id=out.call_id,
                                         content=_text(out.output, f"{where}.output")))
        places.append(where)
    elif isinstance(kind, str):
        raise InvalidRequest(f"'{where}': {kind!r} items are not supported here (a stateless "
                             "text model takes messages, function_call and "
                             "function_call_output items).", param=where)
    else:
        raise InvalidRequest(f"'{where}' must be an input item object with a 'type'.",
                             param=where)


def _text(content: str | list[rp.ContentPart], where: str) -> str:
    if isinstance(content, str):
        return content
    out = []
    for j, part in enumerate(content):
        at = f"{where}.content[{j}]" if not where.endswith(".output") else f"{where}[{j}]"
        if part.type not in rp.CONTENT or part.text is None:
            raise InvalidRequest(f"'{at}': {part.type!r} content is not supported: this is a "
                                 "text model (input_text only).", param=at)
        out.append(part.text)
    return "".join(out)


def _tool(tool: rp.FunctionToolParam, where: str) -> protocol.Tool:
    if tool.type != "function":
        raise InvalidRequest(f"'{where}': the built-in tool {tool.type!r} is not supported; "
                             "only function tools are.", param=where)
    if not tool.name:
        raise InvalidRequest(f"'{where}.name' is required.", param=f"{where}.name")
    return protocol.Tool(type="function", function=protocol.FunctionDefinition(
        name=tool.name, description=tool.description, parameters=tool.parameters,
        strict=tool.strict))


def _tool_choice(choice: Literal["none", "auto", "required"] | rp.ToolChoiceParam | None,
                 tools: list[protocol.Tool]
                 ) -> Literal["none", "auto", "required"] | protocol.NamedToolChoice | None:
    if choice is None or isinstance(choice, str):
        return choice
    if choice.type != "function":
        raise InvalidRequest(f"'tool_choice' of type {choice.type!r} is not supported; use "
                             "none, auto, required or {\"type\": \"function\", \"name\": ...}.",
                             param="tool_choice")
    if choice.name not in {t.function.name for t in tools}:
        raise InvalidRequest(f"'tool_choice.name' {choice.name!r} is not one of 'tools'.",
                             param="tool_choice")
    return protocol.NamedToolChoice(function=protocol.ToolChoiceFunction(name=choice.name))


def _format(text: rp.TextParam | None) -> protocol.ResponseFormat | None:
    fmt = text.format if text is not None else None
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_object":
        return protocol.ResponseFormatJSONObject()
    if not fmt.name:
        raise InvalidRequest("'text.format.name' is required for json_schema.",
                             param="text.format")
    if fmt.schema is None:
        raise InvalidRequest("'text.format.schema' is required for json_schema.",
                             param="text.format")
    return protocol.ResponseFormatJSONSchema(json_schema=protocol.JSONSchemaFormat(
        name=fmt.name, schema=fmt.schema, strict=fmt.strict, description=fmt.description))


_CHAT_NAMES = [(re.compile(r"\bresponse_format(\.json_schema)?"), "text.format"),
               (re.compile(r"\bmax_tokens\b"), "max_output_tokens")]


def renamed(err: APIError, places: list[str]) -> APIError:
    """A chat pipeline's error in the Responses request's names."""
    param = err.param or ""
    match = re.match(r"messages\[(\d+)\](.*)", param)
    if match and int(match.group(1)) < len(places):
        param = places[int(match.group(1))] + (
            "" if match.group(2).startswith(".tool_calls") else match.group(2))
    message = err.message
    for pattern, name in _CHAT_NAMES:
        param, message = pattern.sub(name, param), pattern.sub(name, message)
    message = message.replace("in the messages", "in the input").replace(
        "of the messages", "of the input")
    if err.param is not None:
        err.param = param if param != "messages" else "input"
    err.message = message
    return err


# -- chat -> Responses ----------------------------------------------------------------------------
Status = Literal["completed", "incomplete", "in_progress", "failed"]


class Shell:
    """What every response object of one request carries (ids, the request's settings)."""

    def __init__(self, req: rp.ResponseRequest, rid: str, created: int, model: str):
        self.req, self.rid, self.created, self.model = req, rid, created, model

    def response(self, items: list[rp.OutputItem], usage: protocol.CompletionUsage | None,
                 finish: str | None, status: Status | None = None,
                 error: rp.ResponseError | None = None) -> rp.Response:
        req = self.req
        if status is None:
            status = "incomplete" if finish == "length" else "completed"
        choice = req.tool_choice
        return rp.Response(
            id=f"resp_{self.rid}", created_at=self.created,
            completed_at=int(time.time()) if status == "completed" else None,
            status=status, model=self.model, error=error,
            incomplete_details=rp.IncompleteDetails(reason="max_output_tokens")
            if status == "incomplete" else None,
            instructions=req.instructions, output=items,
            tools=[rp.ResponseFunctionTool(name=t.name or "", description=t.description,
                                      parameters=t.parameters, strict=t.strict)
                   for t in req.tools or []],
            tool_choice=rp.ResponseToolChoiceFunction(name=choice.name or "")
            if isinstance(choice, rp.ToolChoiceParam) else choice or "auto",
            truncation=req.truncation or "disabled",
            parallel_tool_calls=req.parallel_tool_calls is not False,
            text=rp.ResponseTextConfig(format=_format_out(req.text)),
            top_p=_or(req.top_p, 1.0), temperature=_or(req.temperature, 1.0),
            presence_penalty=_or(req.presence_penalty, 0.0),
            frequency_penalty=_or(req.frequency_penalty, 0.0),
            usage=None if usage is None else _usage(usage),
            max_output_tokens=req.max_output_tokens, max_tool_calls=req.max_tool_calls,
            metadata=req.metadata or {}, prompt_cache_key=_str(req.prompt_cache_key),
            safety_identifier=_str(req.safety_identifier), user=_str(req.user))


def output(chat: protocol.ChatCompletion, rid: str) -> list[rp.OutputItem]:
    """The output items of a chat answer: its tool calls, or one message."""
    choice = chat.choices[0]
    calls = choice.message.tool_calls
    if isinstance(calls, list) and calls:
        return [_call_item(c.id, c.function.name, c.function.arguments, "completed")
                for c in calls]
    status: rp.ItemStatus = "incomplete" if choice.finish_reason == "length" else "completed"
    return [rp.ResponseOutputMessage(id=f"msg_{rid}", status=status,
                             content=[rp.ResponseOutputText(text=choice.message.content or "")])]


def _call_item(call_id: str, name: str, arguments: str,
               status: rp.ItemStatus) -> rp.ResponseFunctionToolCall:
    return rp.ResponseFunctionToolCall(id="fc_" + call_id.removeprefix("call_"), call_id=call_id,
                              name=name, arguments=arguments, status=status)


def _format_out(text: rp.TextParam | None) -> rp.TextFormatOut:
    fmt = text.format if text is not None else None
    if fmt is None or fmt.type != "json_schema":
        return rp.TextFormatOut(type=fmt.type if fmt is not None else "text")
    return rp.TextFormatOut(type="json_schema", name=fmt.name or "", schema=fmt.schema or {},
                            strict=fmt.strict, description=fmt.description)


def _usage(chat: protocol.CompletionUsage) -> rp.ResponseUsage:
    details = getattr(chat, "prompt_tokens_details", None)
    cached = int(getattr(details, "cached_tokens", 0) or 0)
    return rp.ResponseUsage(input_tokens=chat.prompt_tokens,
                    input_tokens_details=rp.InputTokensDetails(cached_tokens=cached),
                    output_tokens=chat.completion_tokens,
                    output_tokens_details=rp.OutputTokensDetails(),
                    total_tokens=chat.total_tokens)


def _or(value: float | None, default: float) -> float:
    return default if value is None else float(value)


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


# -- the stream -----------------------------------------------------------------------------------
def sse(event: Model) -> bytes:
    """One event as OpenAI writes it: ``event: <type>`` and its JSON."""
    data = to_builtins(event)
    return (b"event: " + data["type"].encode() + b"\ndata: "
            + json.dumps(data, ensure_ascii=False).encode() + b"\n\n")


class _Events:
    """Numbers the events (``sequence_number`` 0, 1, 2...) and keeps the output items."""

    def __init__(self, shell: Shell):
        self.shell = shell
        self.seq = 0
        self.items: list[rp.OutputItem] = []
        self.text: list[str] | None = None  # the open message's text

    def emit(self, kind: type[rp.Event], **fields: Any) -> bytes:
        event = kind(sequence_number=self.seq, **fields)
        self.seq += 1
        return sse(event)

    @property
    def msg_id(self) -> str:
        return f"msg_{self.shell.rid}"

    def open_message(self) -> Iterator[bytes]:
        self.text = []
        item = rp.ResponseOutputMessage(id=self.msg_id, status="in_progress", content=[])
        yield self.emit(rp.OutputItemAdded, output_index=len(self.items), item=item)
        yield self.emit(rp.ContentPartAdded, item_id=self.msg_id, output_index=len(self.items),
                        content_index=0, part=rp.ResponseOutputText(text=""))

    def text_delta(self, delta: str) -> Iterator[bytes]:
        if self.text is None:
            yield from self.open_message()
        assert self.text is not None
        self.text.append(delta)
        yield self.emit(rp.OutputTextDelta, item_id=self.msg_id, output_index=len(self.items),
                        content_index=0, delta=delta)

    def close_message(self, finish: str | None) -> Iterator[bytes]:
        if self.text is None:
            return
        text, index = "".join(self.text), len(self.items)
        part = rp.ResponseOutputText(text=text)
        yield self.emit(rp.OutputTextDone, item_id=self.msg_id, output_index=index,
                        content_index=0, text=text)
        yield self.emit(rp.ContentPartDone, item_id=self.msg_id, output_index=index,
                        content_index=0, part=part)
        item = rp.ResponseOutputMessage(id=self.msg_id, content=[part],
                                status="incomplete" if finish == "length" else "completed")
        yield self.emit(rp.OutputItemDone, output_index=index, item=item)
        self.items.append(item)
        self.text = None

    def call(self, call: protocol.ToolCallDelta) -> Iterator[bytes]:
        index = len(self.items)
        fn = call.function
        added = _call_item(call.id, fn.name, "", "in_progress")
        yield self.emit(rp.OutputItemAdded, output_index=index, item=added)
        yield self.emit(rp.ArgumentsDelta, item_id=added.id, output_index=index,
                        delta=fn.arguments)
        yield self.emit(rp.ArgumentsDone, item_id=added.id, output_index=index, name=fn.name,
                        arguments=fn.arguments)
        item = _call_item(call.id, fn.name, fn.arguments, "completed")
        yield self.emit(rp.OutputItemDone, output_index=index, item=item)
        self.items.append(item)

    def failed(self, err: APIError) -> Iterator[bytes]:
        payload = rp.ErrorPayload(type=err.type, code=err.code, message=err.message,
                                  param=err.param)
        yield self.emit(rp.ResponseErrorEvent, code=err.code, message=err.message, param=err.param,
                        error=payload)
        yield self.emit(rp.ResponseFailed, response=self.shell.response(
            self.items, None, None, status="failed",
            error=rp.ResponseError(code=err.code or err.type, message=err.message)))


def events(chunks: ChatChunks, shell: Shell) -> Iterator[bytes]:
    """The Responses event stream from the chat chunks (closing it closes them: the generation
    is cancelled); an error after the start is an ``error`` event, then ``response.failed``."""
    from .api import HEARTBEAT, KeepAlive

    out = _Events(shell)
    finish: str | None = None
    usage: protocol.CompletionUsage | None = None
    with closing(chunks):
        first = next(chunks)  # the role chunk, at once: started, closing it cancels
        start = shell.response([], None, None, status="in_progress")
        yield out.emit(rp.ResponseCreated, response=start)
        yield out.emit(rp.ResponseInProgress, response=start)
        try:
            for chunk in itertools.chain([first], chunks):
                if isinstance(chunk, KeepAlive):
                    yield HEARTBEAT
                    continue
                if chunk.usage:
                    usage = chunk.usage
                for choice in chunk.choices[:1]:
                    delta = choice.delta
                    if isinstance(delta.content, str) and delta.content:
                        yield from out.text_delta(delta.content)
                    if isinstance(delta.tool_calls, list):
                        yield from out.close_message(None)
                        for call in delta.tool_calls:
                            yield from out.call(call)
                    if choice.finish_reason is not None:
                        finish = choice.finish_reason
        except APIError as err:
            yield from out.failed(err)
            return
        except Exception:
            log.exception("streaming a response failed")
            yield from out.failed(internal_error())
            return
    if not out.items and out.text is None:  # an empty answer is an empty message
        yield from out.open_message()
    yield from out.close_message(finish)
    final = shell.response(out.items, usage, finish)
    kind = rp.ResponseIncomplete if final.status == "incomplete" else rp.ResponseCompleted
    yield out.emit(kind, response=final)
