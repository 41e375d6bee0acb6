"""Parsing and validating OpenAI completion and chat requests.

Every parameter of the two endpoints (as the ``openai`` SDK's ``completion_create_params``
declare them) is in :data:`CHAT_PARAMETERS` / :data:`COMPLETION_PARAMETERS`: implemented,
accepted because OpenAI gives it no effect here (``ignored``), or answered with a 400 naming it
(``rejected``). A key in neither table is a 400 too, as OpenAI answers an unknown argument.
Wrong types and values are a 400 naming the ``param``.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from llmfn.errors import InvalidRequest
from llmfn.webapp import param

from . import structured
from .engine import Params

MAX_STOP = 4
MAX_TOP_LOGPROBS = 20
ROLES = ("system", "developer", "user", "assistant", "tool")

SHARED = {
    "model": "implemented", "max_tokens": "implemented", "temperature": "implemented",
    "top_p": "implemented", "seed": "implemented", "stop": "implemented",
    "stream": "implemented", "stream_options": "implemented", "n": "implemented",
    "presence_penalty": "implemented", "frequency_penalty": "implemented",
    "logit_bias": "implemented", "logprobs": "implemented", "user": "ignored",
}
CHAT_PARAMETERS = {
    **SHARED, "messages": "implemented", "max_completion_tokens": "implemented",
    "top_logprobs": "implemented", "response_format": "implemented", "tools": "implemented",
    "tool_choice": "implemented", "parallel_tool_calls": "implemented",
    "metadata": "ignored", "store": "ignored", "safety_identifier": "ignored",
    "prompt_cache_key": "ignored", "prompt_cache_retention": "ignored",
    "prompt_cache_options": "ignored", "service_tier": "ignored", "prediction": "ignored",
    "modalities": "implemented", "audio": "rejected", "functions": "rejected",
    "function_call": "rejected", "reasoning_effort": "rejected", "verbosity": "rejected",
    "web_search_options": "rejected", "moderation": "rejected",
}
COMPLETION_PARAMETERS = {
    **SHARED, "prompt": "implemented", "echo": "implemented", "best_of": "implemented",
    "suffix": "rejected",
}
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


@dataclass
class Request:
    """One validated request: what to generate and how to answer."""
    params: Params
    max_tokens_given: bool
    stream: bool
    include_usage: bool
    n: int = 1
    best_of: int = 1
    echo: bool = False
    prompt: str | list[int] | None = None
    messages: list[dict] | None = None
    output: structured.Output = field(default_factory=structured.Output)


def check_parameters(body: dict, table: dict[str, str]) -> None:
    """400 for a key that is rejected here, or that the endpoint does not have."""
    for key, value in body.items():
        status = table.get(key)
        if status is None:
            raise InvalidRequest(f"Unrecognized request argument supplied: {key}", param=key)
        if status == "rejected" and value is not None:
            raise InvalidRequest(f"'{key}' is not supported: {REJECTED_WHY[key]}.", param=key)


def common(body: dict, default_max_tokens: int, max_choices: int) -> Request:
    """Parameters shared by /v1/completions and /v1/chat/completions."""
    max_tokens = param(body, "max_tokens", (int,), None, lo=1)
    if max_tokens is None and "max_completion_tokens" in body:
        max_tokens = param(body, "max_completion_tokens", (int,), None, lo=1)
    temperature = param(body, "temperature", (float,), 1.0, lo=0, hi=2)
    top_p = param(body, "top_p", (float,), 1.0, lo=0, hi=1)
    seed = param(body, "seed", (int,), None)
    stream = param(body, "stream", (bool,), False)
    n = param(body, "n", (int,), 1, lo=1, hi=max_choices)
    param(body, "user", (str,), None)
    stop = param(body, "stop", (str, list), None)
    if isinstance(stop, str):
        stop = [stop]
    stop = stop or []
    if len(stop) > MAX_STOP or not all(isinstance(s, str) for s in stop):
        raise InvalidRequest(f"'stop' must be a string or an array of up to {MAX_STOP} strings.",
                             param="stop")
    options = param(body, "stream_options", (dict,), None)
    include_usage = False
    if options is not None:
        if not stream:
            raise InvalidRequest("'stream_options' is only allowed when 'stream' is true.",
                                 param="stream_options")
        include_usage = param(options, "include_usage", (bool,), False)
    params = Params(max_tokens=max_tokens or default_max_tokens, temperature=float(temperature),
                    top_p=float(top_p), stop=[s for s in stop if s], seed=seed,
                    presence_penalty=float(param(body, "presence_penalty", (float,), 0.0,
                                                 lo=-2, hi=2)),
                    frequency_penalty=float(param(body, "frequency_penalty", (float,), 0.0,
                                                  lo=-2, hi=2)),
                    logit_bias=_logit_bias(param(body, "logit_bias", (dict,), None)))
    return Request(params=params, max_tokens_given=max_tokens is not None, stream=stream,
                   include_usage=include_usage, n=n, best_of=n)


def _logit_bias(raw: dict | None) -> dict[int, float]:
    """OpenAI's ``{"<token id>": bias}`` (string keys, as JSON has them), bias in -100..100."""
    out: dict[int, float] = {}
    for key, bias in (raw or {}).items():
        try:
            token = int(key)
        except (TypeError, ValueError):
            raise InvalidRequest(f"'logit_bias' keys must be token ids, got {key!r}.",
                                 param="logit_bias") from None
        if token < 0 or isinstance(bias, bool) or not isinstance(bias, (int, float)) \
                or not -100 <= bias <= 100:
            raise InvalidRequest("'logit_bias' maps token ids to numbers in -100..100.",
                                 param="logit_bias")
        out[token] = float(bias)
    return out


def completion(body: dict, default_max_tokens: int, max_choices: int) -> Request:
    """POST /v1/completions: `prompt` is a string, one-string array or token array."""
    check_parameters(body, COMPLETION_PARAMETERS)
    req = common(body, default_max_tokens, max_choices)
    prompt = param(body, "prompt", (str, list))
    if isinstance(prompt, list):
        if len(prompt) == 1 and isinstance(prompt[0], str):
            prompt = prompt[0]
        elif prompt and all(isinstance(t, int) and not isinstance(t, bool) and t >= 0
                            for t in prompt):
            pass
        else:
            raise InvalidRequest("'prompt' must be a string, an array with one string, or an "
                                 "array of token ids (one prompt per request).", param="prompt")
    req.prompt = prompt
    logprobs = param(body, "logprobs", (int,), None, lo=0, hi=5)  # OpenAI's limit here
    req.params.logprobs = logprobs
    req.echo = param(body, "echo", (bool,), False)
    if req.echo and logprobs is not None:
        raise InvalidRequest("'echo' with 'logprobs' (log-probabilities of the prompt) is not "
                             "supported; use one or the other.", param="echo")
    req.best_of = param(body, "best_of", (int,), req.n, lo=1, hi=max_choices)
    if req.best_of < req.n:
        raise InvalidRequest("'best_of' must be >= 'n'.", param="best_of")
    if req.best_of > req.n and req.stream:
        raise InvalidRequest("'best_of' > 'n' cannot be streamed.", param="best_of")
    return req


def chat(body: dict, default_max_tokens: int, max_choices: int) -> Request:
    """POST /v1/chat/completions: `messages` with roles and text content, tools, formats."""
    check_parameters(body, CHAT_PARAMETERS)
    req = common(body, default_max_tokens, max_choices)
    messages = param(body, "messages", (list,))
    if not messages:
        raise InvalidRequest("'messages' must be a non-empty array.", param="messages")
    req.messages = [_message(msg, f"messages[{i}]") for i, msg in enumerate(messages)]
    if param(body, "logprobs", (bool,), False):
        req.params.logprobs = param(body, "top_logprobs", (int,), 0, lo=0, hi=MAX_TOP_LOGPROBS)
    elif body.get("top_logprobs") is not None:
        raise InvalidRequest("'top_logprobs' needs 'logprobs': true.", param="top_logprobs")
    modalities = param(body, "modalities", (list,), None)
    if modalities is not None and modalities != ["text"]:
        raise InvalidRequest("'modalities' may only be [\"text\"] here.", param="modalities")
    param(body, "parallel_tool_calls", (bool,), True)
    req.output = structured.parse(body)
    if req.output.schema is not None and req.params.stop:
        raise InvalidRequest("'stop' cannot be combined with structured output: a stop string "
                             "could cut the JSON.", param="stop")
    return req


def _message(msg, where: str) -> dict:
    if not isinstance(msg, dict):
        raise InvalidRequest(f"'{where}' must be an object.", param=where)
    role = msg.get("role")
    if role not in ROLES:
        raise InvalidRequest(f"'{where}.role' must be one of {', '.join(ROLES)}.",
                             param=f"{where}.role")
    out = {"role": "system" if role == "developer" else role,
           "content": _content(msg.get("content"), f"{where}.content")}
    if role == "tool":
        call_id = msg.get("tool_call_id")
        if not isinstance(call_id, str) or not call_id:
            raise InvalidRequest(f"'{where}.tool_call_id' is required for role 'tool'.",
                                 param=f"{where}.tool_call_id")
        out["tool_call_id"] = call_id
    if role == "assistant" and msg.get("tool_calls") is not None:
        out["tool_calls"] = structured.message_tool_calls(msg["tool_calls"],
                                                         f"{where}.tool_calls")
    return out


def _content(content, where: str) -> str:
    """Message content as text: a string or an array of {type: text, text} parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            if not (isinstance(part, dict) and part.get("type") == "text"
                    and isinstance(part.get("text"), str)):
                raise InvalidRequest(f"'{where}' parts must be {{\"type\": \"text\", \"text\": "
                                     "string}; other content types are not supported.",
                                     param=where)
            texts.append(part["text"])
        return "".join(texts)
    raise InvalidRequest(f"'{where}' must be a string or an array of text parts.", param=where)
