"""generate's protocol: every request, response and stream chunk of its routes, as types.

Requests are :class:`llmfn.protocol.Request` s: :func:`decode` validates a body into one (a key
an endpoint does not have is OpenAI's "Unrecognized request argument supplied"; a wrong type or
value is a 400 naming ``param``). What a type cannot say (``best_of`` >= ``n``, bounds set by
the settings, a rejected parameter's reason) is checked by schema.py on the typed request.
Responses and chunks are :class:`llmfn.protocol.Model` s built by answer.py. :data:`OPERATIONS`
writes the OpenAPI document from them (``llmfn.openapi``).

Every OpenAI parameter of the two endpoints is a field: implemented, accepted with no effect
here (:data:`IGNORED`, typed ``Any`` as before), or rejected with its reason
(:data:`REJECTED_WHY`, a 400 unless null). Nested parts of a request (messages, tools,
formats) ignore keys they do not declare, as OpenAI's clients send some we have no use for.
"""
from __future__ import annotations

import re
from typing import Annotated, Any, Literal

import msgspec

from llmfn import openapi, protocol
from llmfn.errors import InvalidRequest
from llmfn.openapi import Operation
from llmfn.protocol import UNSET, Meta, Model, Request, UnsetType, field

from . import messages_protocol, responses_protocol

MAX_STOP = 4
MAX_TOP_LOGPROBS = 20
MAX_COMPLETION_LOGPROBS = 5  # OpenAI's limit on /v1/completions
MAX_TOOLS = 64

IGNORED = {"user", "metadata", "store", "safety_identifier", "prompt_cache_key",
           "prompt_cache_retention", "prompt_cache_options", "service_tier", "prediction"}
"""Parameters OpenAI gives no effect here: accepted, nothing done."""
REJECTED_WHY = {
    "audio": "audio output is not available: this is a text model",
    "functions": "deprecated by OpenAI: use 'tools'",
    "function_call": "deprecated by OpenAI: use 'tool_choice'",
    "reasoning_effort": "this is not a reasoning model",
    "verbosity": "this model has no verbosity control",
    "web_search_options": "web search is not available",
    "moderation": "moderation is not available",
    "suffix": "this model has no fill-in-the-middle tokens",
}
"""Parameters answered with a 400 naming them (unless null), and why."""


NoEffect = Annotated[Any, Meta(description="accepted; no effect here")]
Positive = Annotated[int, Meta(ge=1)]
TokenId = Annotated[int, Meta(ge=0)]
Penalty = Annotated[float, Meta(ge=-2, le=2)]
Bias = Annotated[float, Meta(ge=-100, le=100)]


def _why(name: str) -> str:
    return f"400 unless null: {REJECTED_WHY[name]}"


class Part(msgspec.Struct, kw_only=True, omit_defaults=True):
    """A nested part of a request: keys it does not declare are ignored."""


# -- requests: parts ------------------------------------------------------------------------------
class StreamOptions(Part):
    include_usage: bool | None = None


class TextPart(Part):
    """A content part; other types (images, audio) are not supported."""
    type: Literal["text"]
    text: str


class FunctionCall(Part):
    name: str
    arguments: Annotated[str, Meta(description="JSON text")]


class ToolCall(Part):
    """A call the assistant made, sent back in a conversation."""
    id: str
    function: FunctionCall
    type: Literal["function"] = "function"


class Message(Part):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None
    tool_call_id: Annotated[str | None, Meta(description="required for role tool")] = None
    tool_calls: Annotated[list[ToolCall] | None, Meta(description="role assistant")] = None


class FunctionDefinition(Part):
    name: Annotated[str, Meta(min_length=1)]
    description: str | None = None
    parameters: Annotated[dict[str, Any] | None, Meta(
        description="a JSON schema; keywords that constrain instances are enforced when a call "
        "is forced, or the request is a 400")] = None
    strict: bool | None = None


class Tool(Part):
    type: Literal["function"]
    function: FunctionDefinition


class ToolChoiceFunction(Part):
    name: str


class NamedToolChoice(Part):
    function: ToolChoiceFunction
    type: Literal["function"] = "function"


class ResponseFormatText(Part, tag_field="type", tag="text"):
    pass


class ResponseFormatJSONObject(Part, tag_field="type", tag="json_object"):
    pass


class JSONSchemaFormat(Part):
    name: str
    schema: dict[str, Any] | bool = field(default_factory=dict)
    strict: bool | None = None
    description: str | None = None


class ResponseFormatJSONSchema(Part, tag_field="type", tag="json_schema"):
    json_schema: JSONSchemaFormat


ResponseFormat = ResponseFormatText | ResponseFormatJSONObject | ResponseFormatJSONSchema


# -- requests -------------------------------------------------------------------------------------
class Sampling(Request):
    """A key that is not an OpenAI parameter is a 400 (`Unrecognized request argument
    supplied`)."""
    model: Annotated[str | None, Meta(
        description="optional; must name the served model (404 otherwise)")] = None
    max_tokens: Annotated[Positive | None, Meta(
        description="default `DEFAULT_MAX_TOKENS`, bounded by `N_CTX`")] = None
    temperature: Annotated[float, Meta(ge=0, le=2)] | None = None
    top_p: Annotated[float, Meta(ge=0, le=1)] | None = None
    seed: int | None = None
    stop: Annotated[str | Annotated[list[str], Meta(max_length=MAX_STOP)] | None, Meta(
        description=f"up to {MAX_STOP}")] = None
    stream: bool | None = None
    stream_options: Annotated[StreamOptions | None, Meta(
        description="only with `stream: true`")] = None
    n: Annotated[Positive | None, Meta(description="at most `SLOTS`")] = None
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    logit_bias: Annotated[dict[str, Bias] | None, Meta(
        description="token id (string key) -> bias")] = None
    ignore_eos: Annotated[bool | None, Meta(
        description="extension (llama-server, vLLM): end-of-generation tokens are never "
        "sampled; `stop` and `max_tokens` still end the answer")] = None
    user: Annotated[str | None, Meta(description="no effect here")] = None


class CompletionRequest(Sampling, kw_only=True):
    """POST /v1/completions. A key that is not an OpenAI parameter is a 400 (`Unrecognized
    request argument supplied`)."""
    prompt: Annotated[str | list[str | TokenId], Meta(
        description="a string (an empty string generates from BOS, as OpenAI does), an array "
        "of one string, or an array of token ids")]
    logprobs: Annotated[int, Meta(ge=0, le=MAX_COMPLETION_LOGPROBS)] | None = None
    echo: Annotated[bool | None, Meta(description="not with logprobs")] = None
    best_of: Annotated[Positive | None, Meta(
        description=">= n, at most `SLOTS`; not streamed")] = None
    suffix: Annotated[Any, Meta(description=_why("suffix"))] = None


class ChatCompletionRequest(Sampling, kw_only=True):
    """POST /v1/chat/completions. A key that is not an OpenAI parameter is a 400
    (`Unrecognized request argument supplied`)."""
    messages: Annotated[list[Message], Meta(min_length=1)]
    max_completion_tokens: Annotated[Positive | None, Meta(
        description="same as max_tokens")] = None
    logprobs: bool | None = None
    top_logprobs: Annotated[Annotated[int, Meta(ge=0, le=MAX_TOP_LOGPROBS)] | None, Meta(
        description="with logprobs: true")] = None
    response_format: Annotated[ResponseFormat | None, Meta(
        description="text, json_object, or json_schema (enforced with a grammar; keywords it "
        "cannot enforce are a 400)")] = None
    tools: Annotated[list[Tool], Meta(max_length=MAX_TOOLS)] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: Annotated[bool | None, Meta(
        description="at most one call per answer either way")] = None
    modalities: Annotated[list[Literal["text"]] | None, Meta(
        description='only ["text"]')] = None
    metadata: NoEffect = None
    store: NoEffect = None
    safety_identifier: NoEffect = None
    prompt_cache_key: NoEffect = None
    prompt_cache_retention: NoEffect = None
    prompt_cache_options: NoEffect = None
    service_tier: NoEffect = None
    prediction: NoEffect = None
    audio: Annotated[Any, Meta(description=_why("audio"))] = None
    functions: Annotated[Any, Meta(description=_why("functions"))] = None
    function_call: Annotated[Any, Meta(description=_why("function_call"))] = None
    reasoning_effort: Annotated[Any, Meta(description=_why("reasoning_effort"))] = None
    verbosity: Annotated[Any, Meta(description=_why("verbosity"))] = None
    web_search_options: Annotated[Any, Meta(description=_why("web_search_options"))] = None
    moderation: Annotated[Any, Meta(description=_why("moderation"))] = None


class TokenizeRequest(Request, forbid_unknown_fields=False):
    """POST /tokenize (llama-server's): other keys llama-server knows are ignored."""
    content: str
    add_special: Annotated[bool | None, Meta(description="add BOS")] = None
    with_pieces: bool | None = None


class DetokenizeRequest(Request, forbid_unknown_fields=False):
    """POST /detokenize (llama-server's)."""
    tokens: Annotated[list[TokenId], Meta(description="ids below the vocabulary size")]


def parameters(kind: type[Sampling]) -> dict[str, str]:
    """Each parameter of an endpoint: implemented, ignored or rejected."""
    return {name: "rejected" if name in REJECTED_WHY else "ignored" if name in IGNORED
            else "implemented" for name in kind.__struct_fields__}


CHAT_PARAMETERS = parameters(ChatCompletionRequest)
COMPLETION_PARAMETERS = parameters(CompletionRequest)


# -- decoding: a 400's param as coarse as it always was -------------------------------------------
_PROMPT = ("'prompt' must be a string, an array with one string, or an array of token ids (one "
           "prompt per request).")
_TOOL = ("'{0}' must be {{\"type\": \"function\", \"function\": {{name, description, "
         "parameters}}}}.")
_COARSE: list[tuple[re.Pattern, str, str | None]] = [(re.compile(pattern), param, message) for
                                                     pattern, param, message in [
    (r"stop(\[.*)?", "stop", f"'stop' must be a string or an array of up to {MAX_STOP} strings."),
    (r"logit_bias\[.*", "logit_bias", "'logit_bias' maps token ids to numbers in -100..100."),
    (r"prompt\[.*", "prompt", _PROMPT),
    (r"(messages\[\d+\])\.role", r"\1.role",
     "'{0}' must be one of system, developer, user, assistant, tool."),
    (r"(messages\[\d+\]\.content)", r"\1", "'{0}' must be a string or an array of text parts."),
    (r"(messages\[\d+\]\.content)\[.*", r"\1", "'{0}' parts must be {{\"type\": \"text\", "
     "\"text\": string}}; other content types are not supported."),
    (r"(messages\[\d+\]\.tool_calls\[\d+\])([.\[].*)?", r"\1",
     "'{0}' must be {{id, type: function, function: {{name, arguments: JSON text}}}}."),
    (r"tools", "tools", f"'tools' must be an array of up to {MAX_TOOLS} tools."),
    (r"(tools\[\d+\])\.function\.parameters", r"\1",
     "'{0}.function.parameters' must be a JSON schema."),
    (r"(tools\[\d+\])(\..*)?", r"\1", _TOOL),
    (r"tool_choice(\..*)?", "tool_choice", "'tool_choice' must be none, auto, required or "
     "{{\"type\": \"function\", \"function\": {{\"name\": <one of tools>}}}}."),
    (r"response_format\.json_schema\.schema", "response_format",
     "'response_format.json_schema.schema' must be an object."),
    (r"response_format\.json_schema(\..*)?", "response_format",
     "'response_format.json_schema' must be {{name, schema, strict}}."),
    (r"response_format(\..*)?", "response_format",
     "'response_format' must be {{\"type\": \"text\" | \"json_object\" | \"json_schema\"}}."),
    (r"modalities(\[.*)?", "modalities", "'modalities' may only be [\"text\"] here."),
    (r"stream_options\.include_usage", "include_usage", None),
    (r"tokens\[.*", "tokens", None),
]]
"""msgspec names the exact place (``stop[1]``, ``tools[0].function.name``); the 400s of these
fields always named the field, or the message or tool, with these words."""


def decode(kind: type[Request], body: dict) -> Any:
    """``body`` as ``kind``, or the 400 with the ``param`` (and words) it always had."""
    try:
        return protocol.decode(kind, body)
    except InvalidRequest as err:
        for pattern, param, message in _COARSE:
            match = pattern.fullmatch(err.param or "")
            if match:
                err.param = match.expand(param)
                if message is not None:
                    err.message = message.format(err.param)
                break
        raise


# -- responses ------------------------------------------------------------------------------------
FinishReason = Literal["stop", "length", "tool_calls"]


class PromptTokensDetails(Model):
    """What the prompt's tokens cost."""
    cached_tokens: Annotated[int, Meta(
        description="prompt tokens whose KV a slot kept from an earlier request, so they were "
        "not computed again (the fewest over the choices; 0 on a cold cache)")]


class CompletionUsage(Model):
    """Tokens the request used (every choice and ``best_of`` candidate counted); chat
    completions say in ``prompt_tokens_details`` how many prompt tokens came from the cache."""
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails | UnsetType = UNSET


class TopLogprob(Model):
    token: str
    logprob: float
    bytes: list[int]


class ChatTokenLogprob(Model):
    token: str
    logprob: float
    bytes: list[int]
    top_logprobs: list[TopLogprob]


class ChatLogprobs(Model):
    content: list[ChatTokenLogprob]
    refusal: None = None


class CompletionLogprobs(Model):
    """Four arrays, one entry per token (``text_offset`` counts characters of the text)."""
    tokens: list[str]
    token_logprobs: list[float]
    top_logprobs: list[dict[str, float]]
    text_offset: list[int]


class FunctionCallOut(Model):
    name: str
    arguments: Annotated[str, Meta(description="JSON text")]


class ToolCallOut(Model, kw_only=True):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCallOut


class ToolCallDelta(Model, kw_only=True):
    """A tool call in a stream: sent whole, in one chunk."""
    index: int
    id: str
    type: Literal["function"] = "function"
    function: FunctionCallOut


class CompletionChoice(Model):
    text: str
    index: int
    logprobs: CompletionLogprobs | None
    finish_reason: FinishReason | None


class Completion(Model, kw_only=True):
    """The answer of POST /v1/completions."""
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: CompletionUsage


class CompletionChunk(Model, kw_only=True):
    """An SSE chunk of /v1/completions: one choice's new text, or its end (``text`` "" and
    ``finish_reason``); with ``stream_options.include_usage`` a last chunk with no choices and
    the usage."""
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: CompletionUsage | UnsetType = UNSET


class ChatMessage(Model, kw_only=True):
    role: Literal["assistant"] = "assistant"
    content: str | None
    refusal: None = None
    tool_calls: list[ToolCallOut] | UnsetType = UNSET


class ChatChoice(Model):
    index: int
    message: ChatMessage
    logprobs: ChatLogprobs | None
    finish_reason: FinishReason


class ChatCompletion(Model, kw_only=True):
    """The answer of POST /v1/chat/completions."""
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: CompletionUsage


class Delta(Model):
    """What a chat chunk adds: the role first, then text, or the tool calls."""
    role: Literal["assistant"] | UnsetType = UNSET
    content: str | UnsetType = UNSET
    tool_calls: list[ToolCallDelta] | UnsetType = UNSET


class ChunkChoice(Model):
    index: int
    delta: Delta
    logprobs: ChatLogprobs | None
    finish_reason: FinishReason | None


class ChatCompletionChunk(Model, kw_only=True):
    """An SSE chunk of /v1/chat/completions (``chat.completion.chunk``); with
    ``stream_options.include_usage`` every chunk has ``usage`` null but the last, which has no
    choices and the usage."""
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: CompletionUsage | None | UnsetType = UNSET


class TokenPiece(Model):
    id: int
    piece: str


class TokenizeResponse(Model):
    """The answer of /tokenize: token ids, or with ``with_pieces`` {id, piece} objects."""
    tokens: list[int | TokenPiece]


class DetokenizeResponse(Model):
    """The answer of /detokenize."""
    content: str


# -- the document ---------------------------------------------------------------------------------
TITLE = "llmfn generate"
DESCRIPTION = "OpenAI-compatible text generation on llama.cpp (README.md \"Using the API\")."
_OPENAI_ERRORS = (400, 401, 404, 429, 503)
OPERATIONS = [
    openapi.page("/"),
    Operation("/v1/completions", "post", "createCompletion",
              "Text completion (OpenAI /v1/completions)", ("generate",),
              request=CompletionRequest, response=Completion, stream=CompletionChunk,
              errors=_OPENAI_ERRORS, headers=("X-Request-Id",), returns="the completion as JSON"),
    Operation("/v1/chat/completions", "post", "createChatCompletion",
              "Chat completion (OpenAI /v1/chat/completions)", ("generate",),
              request=ChatCompletionRequest, response=ChatCompletion, stream=ChatCompletionChunk,
              errors=_OPENAI_ERRORS, headers=("X-Request-Id",),
              returns="the chat completion as JSON"),
    Operation("/tokenize", "post", "tokenize", "Text to token ids (llama-server's /tokenize)",
              ("tokenizer",), request=TokenizeRequest, response=TokenizeResponse,
              returns="token ids, or with `with_pieces` {id, piece} objects"),
    Operation("/detokenize", "post", "detokenize",
              "Token ids to text (llama-server's /detokenize)", ("tokenizer",),
              request=DetokenizeRequest, response=DetokenizeResponse, returns="the text"),
    *messages_protocol.OPERATIONS,
    *responses_protocol.OPERATIONS,
]
"""generate's own routes and its page (``POST /``, the request events, is llmfn's)."""
