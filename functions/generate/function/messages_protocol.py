"""Anthropic's Messages API as types: POST /v1/messages and /v1/messages/count_tokens.

The request, the message it answers, its stream events and its error body, as the ``anthropic``
SDK declares them (``types/message_create_params.py``, ``types/raw_message_stream_event.py``);
protocol.py adds :data:`OPERATIONS` to generate's. This module imports only llmfn (tools load
protocol.py and its siblings by path).
messages.py translates a request to a chat request and the chat answer back. A key the request
does not declare is a 400; nested blocks ignore keys they do not declare (``cache_control``,
``citations``: clients send them). Blocks a text model cannot take (``image``, ``document``,
``thinking``...) and server tools are a 400 naming the block or tool (:func:`check_blocks`).
"""
from __future__ import annotations

from typing import Annotated, Any, Literal, cast

import msgspec

from llmfn.errors import InvalidRequest
from llmfn.openapi import Operation, error_response
from llmfn.protocol import Meta, Model, Request

MAX_STOP = 4  # chat's (protocol.py imports this module: it cannot import protocol.py)
MAX_TOOLS = 64

REJECTED_WHY = {
    "thinking": "this is not a reasoning model",
    "container": "code execution containers are not available",
    "mcp_servers": "MCP servers are not available",
    "context_management": "context management needs stored state, which a scaled-to-zero "
                          "function does not keep",
}
"""Parameters answered with a 400 naming them (unless null), and why."""
IGNORED = {"metadata", "service_tier", "inference_geo", "diagnostics", "cache_control", "speed",
           "user_profile_id", "workspace_id", "output_config.effort"}
"""Parameters accepted with no effect here."""
BLOCKS = {"text", "tool_use", "tool_result"}
"""The content blocks a request may hold; any other type is a 400 naming it."""


class Part(msgspec.Struct, kw_only=True, omit_defaults=True):
    """A nested part of a request: keys it does not declare (``cache_control``) are ignored."""


# -- requests -------------------------------------------------------------------------------------
class TextBlock(Part, tag_field="type", tag="text"):
    text: str


class ToolUseBlock(Part, tag_field="type", tag="tool_use"):
    """A call the assistant made, sent back in a conversation."""
    id: str
    name: str
    input: dict[str, Any]


class ToolResultBlock(Part, tag_field="type", tag="tool_result"):
    """The result of a call, in a user message."""
    tool_use_id: str
    content: str | list[TextBlock] | None = None
    is_error: bool | None = None


ContentBlock = TextBlock | ToolUseBlock | ToolResultBlock


class MessageParam(Part):
    role: Literal["user", "assistant"]
    content: str | list[ContentBlock]


class ToolParam(Part):
    """A client tool (``type`` custom or left out); server tools are a 400."""
    name: Annotated[str, Meta(min_length=1)]
    input_schema: Annotated[dict[str, Any], Meta(
        description="a JSON schema; keywords that constrain instances are enforced when a call "
        "is forced, or the request is a 400")]
    description: str | None = None
    type: Literal["custom"] | None = None


class ToolChoiceAuto(Part, tag_field="type", tag="auto"):
    disable_parallel_tool_use: Annotated[bool | None, Meta(
        description="at most one call per answer either way")] = None


class ToolChoiceAny(Part, tag_field="type", tag="any"):
    disable_parallel_tool_use: bool | None = None


class ToolChoiceTool(Part, tag_field="type", tag="tool"):
    name: str
    disable_parallel_tool_use: bool | None = None


class ToolChoiceNone(Part, tag_field="type", tag="none"):
    pass


ToolChoice = ToolChoiceAuto | ToolChoiceAny | ToolChoiceTool | ToolChoiceNone
System = Annotated[str | list[TextBlock], Meta(description="a string or text blocks")]
NoEffect = Annotated[Any, Meta(description="accepted; no effect here")]


class JSONOutputFormat(Part):
    """Structured output: JSON valid against ``schema`` (chat's ``json_schema`` engine)."""
    type: Literal["json_schema"]
    schema: dict[str, Any]


class OutputConfig(Part):
    format: Annotated[JSONOutputFormat | None, Meta(
        description="enforced with a grammar; keywords it cannot enforce are a 400")] = None
    effort: Annotated[Any, Meta(description="accepted; no effect here (no reasoning)")] = None


class CountTokensRequest(Request):
    """POST /v1/messages/count_tokens: the prompt a /v1/messages request would have."""
    model: Annotated[str, Meta(description="must name the served model (404 otherwise)")]
    messages: Annotated[list[MessageParam], Meta(min_length=1)]
    system: System | None = None
    tools: Annotated[list[ToolParam], Meta(max_length=MAX_TOOLS)] | None = None
    tool_choice: ToolChoice | None = None
    output_config: OutputConfig | None = None
    output_format: Annotated[JSONOutputFormat | None, Meta(
        description="as `output_config.format`")] = None
    thinking: Annotated[Any, Meta(description="400 unless null: " + REJECTED_WHY["thinking"])] \
        = None
    cache_control: Annotated[Any, Meta(
        description="accepted; prompt prefixes are reused without it")] = None
    speed: NoEffect = None
    user_profile_id: NoEffect = None
    workspace_id: NoEffect = None


class MessagesRequest(CountTokensRequest, kw_only=True):
    """POST /v1/messages (Anthropic's Messages API). A key it does not declare is a 400."""
    max_tokens: Annotated[int, Meta(ge=1, description="required, bounded by `N_CTX`")]
    stop_sequences: Annotated[list[str], Meta(max_length=MAX_STOP)] | None = None
    temperature: Annotated[float, Meta(ge=0, le=1)] | None = None
    top_p: Annotated[float, Meta(ge=0, le=1)] | None = None
    top_k: Annotated[int, Meta(ge=0, description="0: no top-k cut")] | None = None
    stream: bool | None = None
    metadata: NoEffect = None
    service_tier: NoEffect = None
    inference_geo: NoEffect = None
    diagnostics: NoEffect = None
    container: Annotated[Any, Meta(description="400 unless null: " + REJECTED_WHY[
        "container"])] = None
    mcp_servers: Annotated[Any, Meta(description="400 unless null: " + REJECTED_WHY[
        "mcp_servers"])] = None
    context_management: Annotated[Any, Meta(description="400 unless null: " + REJECTED_WHY[
        "context_management"])] = None


def check_blocks(body: dict) -> None:
    """A 400 naming the first block or tool of ``body`` this text model cannot take (before the
    typed decode, whose message would only say the tag is invalid)."""
    system = body.get("system")
    places: list[tuple[str, Any]] = [("system", system)] if isinstance(system, list) else []
    messages = body.get("messages")
    if isinstance(messages, list):
        places += [(f"messages[{i}].content", m.get("content")) for i, m in enumerate(messages)
                   if isinstance(m, dict)]
    for where, blocks in places:
        if not isinstance(blocks, list):
            continue
        for j, block in enumerate(blocks):
            kind = block.get("type") if isinstance(block, dict) else None
            allowed = {"text"} if where == "system" else BLOCKS
            if isinstance(kind, str) and kind not in allowed:
                raise InvalidRequest(f"'{where}[{j}]': {kind!r} blocks are not supported here: "
                                     f"this is a text model (blocks: {', '.join(sorted(allowed))}"
                                     ").", param=f"{where}[{j}]")
            inner = block.get("content") if isinstance(block, dict) else None
            if kind == "tool_result" and isinstance(inner, list):
                for k, part in enumerate(inner):
                    sub = part.get("type") if isinstance(part, dict) else None
                    if isinstance(sub, str) and sub != "text":
                        raise InvalidRequest(
                            f"'{where}[{j}].content[{k}]': {sub!r} blocks are not supported "
                            "in a tool result: only text.", param=f"{where}[{j}].content[{k}]")
    tools = body.get("tools")
    for i, tool in enumerate(tools if isinstance(tools, list) else []):
        kind = tool.get("type") if isinstance(tool, dict) else None
        if kind not in (None, "custom"):
            raise InvalidRequest(f"'tools[{i}]': the server tool {kind!r} is not available "
                                 "here: only client tools (name, description, input_schema).",
                                 param=f"tools[{i}]")


# -- responses ------------------------------------------------------------------------------------
StopReason = Literal["end_turn", "max_tokens", "stop_sequence", "tool_use"]


class TextOut(Model, tag_field="type", tag="text"):
    text: str
    citations: None = None


class ToolUseOut(Model, tag_field="type", tag="tool_use"):
    id: str
    name: str
    input: dict[str, Any]


class Usage(Model):
    """Tokens the request used; ``cache_read_input_tokens``: prompt tokens reused from the
    slot's KV cache (none are written to a separate cache: ``cache_creation_input_tokens`` 0)."""
    input_tokens: int
    output_tokens: int
    cache_creation_input_tokens: int | None = 0
    cache_read_input_tokens: int | None = 0


class AnthropicMessage(Model, tag_field="type", tag="message", kw_only=True):
    """The answer of POST /v1/messages."""
    id: str
    role: Literal["assistant"] = "assistant"
    model: str
    content: list[TextOut | ToolUseOut]
    stop_reason: StopReason | None
    stop_sequence: str | None
    usage: Usage


class TokenCount(Model):
    """The answer of POST /v1/messages/count_tokens."""
    input_tokens: int


# -- stream events --------------------------------------------------------------------------------
class TextDelta(Model, tag_field="type", tag="text_delta"):
    text: str


class InputJSONDelta(Model, tag_field="type", tag="input_json_delta"):
    partial_json: str


class MessageDeltaBody(Model):
    stop_reason: StopReason | None
    stop_sequence: str | None


class DeltaUsage(Model):
    """The usage at the end of a stream (``output_tokens`` counted; the rest as at start)."""
    output_tokens: int
    input_tokens: int | None = None
    cache_creation_input_tokens: int | None = None
    cache_read_input_tokens: int | None = None


class MessageStart(Model, tag_field="type", tag="message_start"):
    message: AnthropicMessage


class ContentBlockStart(Model, tag_field="type", tag="content_block_start"):
    index: int
    content_block: TextOut | ToolUseOut


class ContentBlockDelta(Model, tag_field="type", tag="content_block_delta"):
    index: int
    delta: TextDelta | InputJSONDelta


class ContentBlockStop(Model, tag_field="type", tag="content_block_stop"):
    index: int


class MessageDelta(Model, tag_field="type", tag="message_delta"):
    delta: MessageDeltaBody
    usage: DeltaUsage


class MessageStop(Model, tag_field="type", tag="message_stop"):
    pass


class Ping(Model, tag_field="type", tag="ping"):
    pass


class AnthropicErrorDetail(Model):
    type: str
    message: str


class ErrorEvent(Model, tag_field="type", tag="error"):
    """An error body (any non-2xx of /v1/messages*), or a stream's ``error`` event."""
    error: AnthropicErrorDetail


StreamEvent = (MessageStart | ContentBlockStart | ContentBlockDelta | ContentBlockStop
               | MessageDelta | MessageStop | Ping | ErrorEvent)
"""One SSE event of a stream: ``event: <type>`` then ``data: <the event>``."""


# -- the document ---------------------------------------------------------------------------------
_ERRORS = {
    400: "invalid_request_error: invalid JSON, a wrong type or value, a block or tool a text "
         "model cannot take, or over the context length",
    401: "authentication_error: `API_KEYS`/`API_KEYS_FILE` set and no or a wrong key "
         "(`x-api-key` or `Authorization: Bearer`)",
    404: "not_found_error: `model` names another model, or no such route",
    405: "invalid_request_error: method not allowed",
    413: "request_too_large: the body is over `MAX_REQUEST_BYTES`",
    415: "invalid_request_error: Content-Type is not JSON",
    429: "rate_limit_error: the queue is full or the key has `MAX_CONCURRENT_PER_KEY` requests "
         "in flight",
    500: "api_error: an unexpected error",
    503: "overloaded_error: the model is loading, or the function is stopping",
}
ERROR_RESPONSES = {status: error_response(text, status, ErrorEvent)
                   for status, text in _ERRORS.items() if status != 405}
"""Every error of these routes, in Anthropic's shape."""
_ANTHROPIC = ("Anthropic's Messages API on the chat pipeline. Errors have Anthropic's shape, "
              "`{\"type\": \"error\", \"error\": {type, message}}`; `x-api-key` is accepted "
              "like a bearer key, `anthropic-version` and `anthropic-beta` are ignored.")
OPERATIONS = [
    Operation("/v1/messages", "post", "createMessage", "Message (Anthropic /v1/messages)",
              ("anthropic",), request=MessagesRequest, response=AnthropicMessage,
              stream=cast(type, StreamEvent),  # a union of event types: documented as one
              errors=(), responses=ERROR_RESPONSES, headers=("X-Request-Id",),
              description=_ANTHROPIC, returns="the message as JSON",
              sse="the SSE stream of Anthropic's events (`event: <type>` and `data: {event}`: "
              "message_start, content_block_start/delta/stop, message_delta, message_stop; "
              "ping while the prompt is processed; an error event after the start)"),
    Operation("/v1/messages/count_tokens", "post", "countMessageTokens",
              "Count a message's prompt tokens (Anthropic /v1/messages/count_tokens)",
              ("anthropic",), request=CountTokensRequest, response=TokenCount, errors=(),
              responses=ERROR_RESPONSES, description=_ANTHROPIC,
              returns="the prompt's token count"),
]
"""The Messages routes, for protocol.py's ``OPERATIONS``."""
