"""OpenAI's Responses API as types: POST /v1/responses (stateless).

The request, the response object, its stream events, as openai-python declares them
(``types/responses/response_create_params.py``, ``response.py``, ``response_stream_event.py``)
and as the Open Responses document requires them (every field of its ``ResponseResource``
written). protocol.py adds :data:`OPERATIONS` to generate's; this module imports only llmfn
(tools load protocol.py and its siblings by path). responses.py translates a request to a chat
request and the chat answer back.

A key the request does not declare is a 400. ``input`` items are checked one by one by
responses.py (:data:`INPUT_ITEMS`), so a 400 names the item (``input[2].content[1]``).
Parameters that need stored state (``store: true``, ``previous_response_id``, ``background``,
``conversation``) are a 400 saying so: a scaled-to-zero function keeps none.
"""
from __future__ import annotations

from typing import Annotated, Any, Literal, cast

import msgspec

from llmfn.openapi import Operation
from llmfn.protocol import UNSET, Meta, Model, Request, UnsetType

MAX_TOOLS = 64
STATELESS = ("a scaled-to-zero function keeps no state between requests: send the whole "
             "conversation in 'input' (store: false)")
REJECTED_WHY = {
    "previous_response_id": STATELESS,
    "conversation": STATELESS,
    "prompt": "stored prompt templates need stored state, which a scaled-to-zero function "
              "does not keep",
    "top_logprobs": "log-probabilities are available on /v1/chat/completions (logprobs)",
}
"""Parameters answered with a 400 naming them (unless null), and why; ``store: true`` and
``background: true`` also are (responses.py)."""
IGNORED = {"include", "reasoning", "prompt_cache_key", "prompt_cache_retention",
           "prompt_cache_options", "safety_identifier", "service_tier", "user", "truncation",
           "stream_options", "text.verbosity"}
"""Parameters the named clients send by default, accepted with no effect here."""
INPUT_ITEMS = ("message", "function_call", "function_call_output")
CONTENT = ("input_text", "output_text")
"""What ``input`` may hold; any other item or content type (``input_image``, ``input_file``,
``reasoning``, ``item_reference``...) is a 400 naming it."""

NoEffect = Annotated[Any, Meta(description="accepted; no effect here")]


def _why(name: str) -> str:
    return f"400 unless null: {REJECTED_WHY[name]}"


class Part(msgspec.Struct, kw_only=True, omit_defaults=True):
    """A nested part of a request: keys it does not declare (``id``, ``status``,
    ``annotations`` of items a client sends back) are ignored."""


# -- requests -------------------------------------------------------------------------------------
class ContentPart(Part):
    """``input_text`` (or ``output_text``, an earlier answer sent back); other types are a 400."""
    type: str
    text: str | None = None


class InputMessage(Part):
    """A message item (``type`` ``message``, or left out as clients' easy messages do)."""
    role: Literal["user", "assistant", "system", "developer"]
    content: str | list[ContentPart]
    type: Literal["message"] | None = None


class FunctionCallItem(Part):
    """A call the model made, sent back in a conversation."""
    type: Literal["function_call"]
    call_id: Annotated[str, Meta(min_length=1)]
    name: Annotated[str, Meta(min_length=1)]
    arguments: Annotated[str, Meta(description="JSON text")]


class FunctionCallOutputItem(Part):
    """The result of a call."""
    type: Literal["function_call_output"]
    call_id: Annotated[str, Meta(min_length=1)]
    output: str | list[ContentPart]


InputItem = Annotated[dict[str, Any], Meta(
    description="a message (`role` user | assistant | system | developer, `content` a string or "
    "`input_text` / `output_text` parts), a `function_call` or a `function_call_output` item; "
    "other items and content (`input_image`, `input_file`, `reasoning`, `item_reference`) are "
    "a 400 naming them")]


class FunctionToolParam(Part):
    """A function tool; built-in tools (``web_search``, ``file_search``...) are a 400 naming
    the tool."""
    type: Annotated[str, Meta(description="`function`; any other type is a 400")]
    name: Annotated[str, Meta(min_length=1)] | None = None
    description: str | None = None
    parameters: Annotated[dict[str, Any] | None, Meta(
        description="a JSON schema; keywords that constrain instances are enforced when a call "
        "is forced, or the request is a 400")] = None
    strict: bool | None = None


class ToolChoiceParam(Part):
    """``{"type": "function", "name": ...}``; other types are a 400."""
    type: str
    name: str | None = None


class TextFormatParam(Part):
    type: Literal["text", "json_object", "json_schema"]
    name: str | None = None
    schema: dict[str, Any] | bool | None = None
    strict: bool | None = None
    description: str | None = None


class TextParam(Part):
    format: Annotated[TextFormatParam | None, Meta(
        description="text, json_object, or json_schema (enforced with a grammar, as chat's "
        "response_format; keywords it cannot enforce are a 400)")] = None
    verbosity: NoEffect = None


class ResponseRequest(Request):
    """POST /v1/responses (OpenAI's Responses API, stateless). A key it does not declare is a
    400."""
    input: Annotated[str | list[InputItem], Meta(
        description="a string (one user message) or items")]
    model: Annotated[str | None, Meta(
        description="optional; must name the served model (404 otherwise)")] = None
    instructions: Annotated[str | None, Meta(description="a system message first")] = None
    tools: Annotated[list[FunctionToolParam], Meta(max_length=MAX_TOOLS)] | None = None
    tool_choice: Literal["none", "auto", "required"] | ToolChoiceParam | None = None
    parallel_tool_calls: Annotated[bool | None, Meta(
        description="at most one call per answer either way")] = None
    max_tool_calls: Annotated[Annotated[int, Meta(ge=1)] | None, Meta(
        description="at most one call per answer either way")] = None
    text: TextParam | None = None
    max_output_tokens: Annotated[Annotated[int, Meta(ge=1)] | None, Meta(
        description="default `DEFAULT_MAX_TOKENS`, bounded by `N_CTX`")] = None
    temperature: Annotated[float, Meta(ge=0, le=2)] | None = None
    top_p: Annotated[float, Meta(ge=0, le=1)] | None = None
    presence_penalty: Annotated[float, Meta(ge=-2, le=2)] | None = None
    frequency_penalty: Annotated[float, Meta(ge=-2, le=2)] | None = None
    metadata: Annotated[Annotated[dict[Annotated[str, Meta(max_length=64)], Annotated[
        str, Meta(max_length=512)]], Meta(max_length=16)] | None, Meta(
        description="up to 16 string pairs; echoed in the response")] = None
    stream: bool | None = None
    store: Annotated[bool | None, Meta(
        description="false or left out (stateless); true is a 400")] = None
    background: Annotated[bool | None, Meta(description="false or left out; true is a 400")] \
        = None
    previous_response_id: Annotated[Any, Meta(description=_why("previous_response_id"))] = None
    conversation: Annotated[Any, Meta(description=_why("conversation"))] = None
    prompt: Annotated[Any, Meta(description=_why("prompt"))] = None
    top_logprobs: Annotated[Any, Meta(description="400 unless null or 0: "
                                      + REJECTED_WHY["top_logprobs"])] = None
    truncation: Annotated[Literal["auto", "disabled"] | None, Meta(
        description="no effect: input over `N_CTX` is a 400 either way")] = None
    include: NoEffect = None
    reasoning: Annotated[Any, Meta(description="accepted; no effect (not a reasoning model)")] \
        = None
    stream_options: NoEffect = None
    prompt_cache_key: Annotated[Any, Meta(
        description="accepted; prompt prefixes are reused without it")] = None
    prompt_cache_retention: NoEffect = None
    prompt_cache_options: NoEffect = None
    safety_identifier: NoEffect = None
    service_tier: NoEffect = None
    user: NoEffect = None


# -- responses ------------------------------------------------------------------------------------
class ResponseOutputText(Model, kw_only=True):
    type: Literal["output_text"] = "output_text"
    text: str
    annotations: list[Any] = msgspec.field(default_factory=list)
    logprobs: list[Any] = msgspec.field(default_factory=list)


ItemStatus = Literal["in_progress", "completed", "incomplete"]


class ResponseOutputMessage(Model, kw_only=True, tag_field="type", tag="message"):
    id: str
    status: ItemStatus
    role: Literal["assistant"] = "assistant"
    content: list[ResponseOutputText]


class ResponseFunctionToolCall(Model, kw_only=True, tag_field="type", tag="function_call"):
    id: str
    call_id: str
    name: str
    arguments: Annotated[str, Meta(description="JSON text")]
    status: ItemStatus


OutputItem = ResponseOutputMessage | ResponseFunctionToolCall


class ResponseFunctionTool(Model, kw_only=True):
    type: Literal["function"] = "function"
    name: str
    description: str | None
    parameters: dict[str, Any] | None
    strict: bool | None


class ResponseToolChoiceFunction(Model, kw_only=True):
    type: Literal["function"] = "function"
    name: str


class TextFormatOut(Model, kw_only=True):
    type: Literal["text", "json_object", "json_schema"]
    name: str | UnsetType = UNSET
    schema: dict[str, Any] | bool | UnsetType = UNSET
    strict: bool | None | UnsetType = UNSET
    description: str | None | UnsetType = UNSET


class ResponseTextConfig(Model, kw_only=True):
    format: TextFormatOut


class InputTokensDetails(Model, kw_only=True):
    cached_tokens: Annotated[int, Meta(description="prompt tokens the scheduler reused")]


class OutputTokensDetails(Model, kw_only=True):
    reasoning_tokens: int = 0


class ResponseUsage(Model, kw_only=True):
    input_tokens: int
    input_tokens_details: InputTokensDetails
    output_tokens: int
    output_tokens_details: OutputTokensDetails
    total_tokens: int


class IncompleteDetails(Model, kw_only=True):
    reason: Literal["max_output_tokens"]


class ResponseError(Model, kw_only=True):
    code: str
    message: str


class Response(Model, kw_only=True):
    """The answer of POST /v1/responses (and the snapshot its stream events carry)."""
    id: str
    object: Literal["response"] = "response"
    created_at: int
    completed_at: int | None
    status: Literal["completed", "incomplete", "in_progress", "failed"]
    incomplete_details: IncompleteDetails | None = None
    model: str
    previous_response_id: None = None
    instructions: str | None
    output: list[OutputItem]
    error: ResponseError | None = None
    tools: list[ResponseFunctionTool]
    tool_choice: Literal["none", "auto", "required"] | ResponseToolChoiceFunction
    truncation: Literal["auto", "disabled"]
    parallel_tool_calls: bool
    text: ResponseTextConfig
    top_p: float
    presence_penalty: float
    frequency_penalty: float
    top_logprobs: int = 0
    temperature: float
    reasoning: None = None
    usage: ResponseUsage | None
    max_output_tokens: int | None
    max_tool_calls: int | None
    store: bool = False
    background: bool = False
    service_tier: str = "default"
    metadata: dict[str, str]
    safety_identifier: str | None = None
    prompt_cache_key: str | None = None
    user: str | None = None


# -- stream events --------------------------------------------------------------------------------
class Event(Model, kw_only=True):
    sequence_number: Annotated[int, Meta(description="0, 1, 2... with no gaps")]


class ResponseCreated(Event, kw_only=True, tag_field="type", tag="response.created"):
    response: Response


class ResponseInProgress(Event, kw_only=True, tag_field="type", tag="response.in_progress"):
    response: Response


class ResponseCompleted(Event, kw_only=True, tag_field="type", tag="response.completed"):
    response: Response


class ResponseIncomplete(Event, kw_only=True, tag_field="type", tag="response.incomplete"):
    response: Response


class ResponseFailed(Event, kw_only=True, tag_field="type", tag="response.failed"):
    response: Response


class OutputItemAdded(Event, kw_only=True, tag_field="type", tag="response.output_item.added"):
    output_index: int
    item: OutputItem


class OutputItemDone(Event, kw_only=True, tag_field="type", tag="response.output_item.done"):
    output_index: int
    item: OutputItem


class ContentPartAdded(Event, kw_only=True, tag_field="type", tag="response.content_part.added"):
    item_id: str
    output_index: int
    content_index: int
    part: ResponseOutputText


class ContentPartDone(Event, kw_only=True, tag_field="type", tag="response.content_part.done"):
    item_id: str
    output_index: int
    content_index: int
    part: ResponseOutputText


class OutputTextDelta(Event, kw_only=True, tag_field="type", tag="response.output_text.delta"):
    item_id: str
    output_index: int
    content_index: int
    delta: str
    logprobs: list[Any] = msgspec.field(default_factory=list)


class OutputTextDone(Event, kw_only=True, tag_field="type", tag="response.output_text.done"):
    item_id: str
    output_index: int
    content_index: int
    text: str
    logprobs: list[Any] = msgspec.field(default_factory=list)


class ArgumentsDelta(Event, tag_field="type", tag="response.function_call_arguments.delta"):
    item_id: str
    output_index: int
    delta: str


class ArgumentsDone(Event, tag_field="type", tag="response.function_call_arguments.done"):
    item_id: str
    output_index: int
    name: str
    arguments: str


class ErrorPayload(Model, kw_only=True):
    type: str
    code: str | None
    message: str
    param: str | None


class ResponseErrorEvent(Event, kw_only=True, tag_field="type", tag="error"):
    """An error after the stream started (then ``response.failed``): ``error`` as the Open
    Responses document has it, ``code``/``message``/``param`` also at the top as openai-python's
    ``ResponseErrorEvent`` has them."""
    code: str | None
    message: str
    param: str | None
    error: ErrorPayload


StreamEvent = (ResponseCreated | ResponseInProgress | OutputItemAdded | ContentPartAdded
               | OutputTextDelta | OutputTextDone | ArgumentsDelta | ArgumentsDone
               | ContentPartDone | OutputItemDone | ResponseCompleted | ResponseIncomplete
               | ResponseErrorEvent | ResponseFailed)


# -- the document ---------------------------------------------------------------------------------
_RESPONSES = ("Stateless: `store` true, `previous_response_id`, `background` and `conversation` "
              "are a 400 (a scaled-to-zero function keeps no state; send the whole "
              "conversation). docs/agents.md lists what is supported.")
OPERATIONS = [
    Operation("/v1/responses", "post", "createResponse", "Response (OpenAI /v1/responses)",
              ("responses",), request=ResponseRequest, response=Response,
              stream=cast(type, StreamEvent),  # a union of event types: documented as one
              errors=(400, 401, 404, 429, 503), headers=("X-Request-Id",),
              description=_RESPONSES, returns="the response as JSON",
              sse="the SSE stream of the Responses events (`event: <type>` and `data: {event}` "
              "with `sequence_number` from 0: response.created, response.in_progress, "
              "output_item.added, content_part.added, output_text.delta/.done or "
              "function_call_arguments.delta/.done, content_part.done, output_item.done, "
              "response.completed or response.incomplete; `: keep-alive` comments while the "
              "prompt is processed; an error event and response.failed after the start)"),
]
"""The Responses route, for protocol.py's ``OPERATIONS``."""
