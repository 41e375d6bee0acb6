"""From a typed request (protocol.py) to what to generate and how to answer.

protocol.py declares every parameter of the two endpoints (as the ``openai`` SDK's
``completion_create_params`` declare them) and validates types and bounds; here are the checks
a type cannot make: bounds set by the settings (``n``, ``best_of`` at most ``SLOTS``), a
rejected parameter's 400 with its reason, and what spans fields (``best_of`` >= ``n``,
``stream_options`` only with ``stream``, structured output with no ``stop`` nor
``ignore_eos``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from llmfn.errors import InvalidRequest

from . import protocol, structured
from .engine import Params
from .protocol import (
    CHAT_PARAMETERS,
    COMPLETION_PARAMETERS,
    REJECTED_WHY,
    ChatCompletionRequest,
    CompletionRequest,
    Message,
    Sampling,
)

__all__ = ["CHAT_PARAMETERS", "COMPLETION_PARAMETERS", "REJECTED_WHY", "Request", "completion",
           "chat", "chat_request"]


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


def completion(body: dict, default_max_tokens: int, max_choices: int) -> Request:
    """POST /v1/completions: `prompt` is a string, one-string array or token array."""
    typed = protocol.decode(CompletionRequest, body)
    req = _common(typed, default_max_tokens, max_choices)
    req.prompt = _prompt(typed.prompt)
    req.params.logprobs = typed.logprobs
    req.echo = bool(typed.echo)
    if req.echo and typed.logprobs is not None:
        raise InvalidRequest("'echo' with 'logprobs' (log-probabilities of the prompt) is not "
                             "supported; use one or the other.", param="echo")
    req.best_of = req.n if typed.best_of is None else _at_most(typed.best_of, "best_of",
                                                                max_choices)
    if req.best_of < req.n:
        raise InvalidRequest("'best_of' must be >= 'n'.", param="best_of")
    if req.best_of > req.n and req.stream:
        raise InvalidRequest("'best_of' > 'n' cannot be streamed.", param="best_of")
    return req


def chat(body: dict, default_max_tokens: int, max_choices: int) -> Request:
    """POST /v1/chat/completions: `messages` with roles and text content, tools, formats."""
    return chat_request(protocol.decode(ChatCompletionRequest, body), default_max_tokens,
                        max_choices)


def chat_request(typed: ChatCompletionRequest, default_max_tokens: int,
                 max_choices: int) -> Request:
    """A typed chat request (decoded, or translated from another API) checked as chat's."""
    req = _common(typed, default_max_tokens, max_choices)
    req.messages = [_message(msg, f"messages[{i}]") for i, msg in enumerate(typed.messages)]
    if typed.logprobs:
        req.params.logprobs = typed.top_logprobs or 0
    elif typed.top_logprobs is not None:
        raise InvalidRequest("'top_logprobs' needs 'logprobs': true.", param="top_logprobs")
    if typed.modalities is not None and typed.modalities != ["text"]:
        raise InvalidRequest("'modalities' may only be [\"text\"] here.", param="modalities")
    req.output = structured.parse(typed)
    if req.output.schema is not None and req.params.stop:
        raise InvalidRequest("'stop' cannot be combined with structured output: a stop string "
                             "could cut the JSON.", param="stop")
    if req.output.schema is not None and req.params.ignore_eos:
        raise InvalidRequest("'ignore_eos' cannot be combined with structured output or a "
                             "forced tool call: the answer ends where its JSON ends.",
                             param="ignore_eos")
    return req


def _common(typed: Sampling, default_max_tokens: int, max_choices: int) -> Request:
    """Parameters shared by /v1/completions and /v1/chat/completions."""
    _refuse_rejected(typed)
    max_tokens = typed.max_tokens
    if max_tokens is None and isinstance(typed, ChatCompletionRequest):
        max_tokens = typed.max_completion_tokens
    stream = bool(typed.stream)
    n = 1 if typed.n is None else _at_most(typed.n, "n", max_choices)
    stop = [typed.stop] if isinstance(typed.stop, str) else typed.stop or []
    include_usage = False
    if typed.stream_options is not None:
        if not stream:
            raise InvalidRequest("'stream_options' is only allowed when 'stream' is true.",
                                 param="stream_options")
        include_usage = bool(typed.stream_options.include_usage)
    params = Params(max_tokens=max_tokens or default_max_tokens,
                    temperature=_or(typed.temperature, 1.0), top_p=_or(typed.top_p, 1.0),
                    stop=[s for s in stop if s], seed=typed.seed,
                    presence_penalty=_or(typed.presence_penalty, 0.0),
                    frequency_penalty=_or(typed.frequency_penalty, 0.0),
                    logit_bias=_logit_bias(typed.logit_bias),
                    ignore_eos=bool(typed.ignore_eos))
    top_k = getattr(typed, "top_k", None)  # not chat's: a translated Messages request's
    if top_k is not None:
        params.top_k = top_k
    return Request(params=params, max_tokens_given=max_tokens is not None, stream=stream,
                   include_usage=include_usage, n=n, best_of=n)


def _refuse_rejected(typed: Sampling) -> None:
    """A 400 naming a parameter we cannot honour (null is as good as absent)."""
    for key, why in REJECTED_WHY.items():
        if getattr(typed, key, None) is not None:
            raise InvalidRequest(f"'{key}' is not supported: {why}.", param=key)


def _or(value: float | None, default: float) -> float:
    return default if value is None else float(value)


def _at_most(value: int, name: str, hi: int) -> int:
    """A bound the settings set (``SLOTS``), so not the type's."""
    if value > hi:
        raise InvalidRequest(f"'{name}' must be <= {hi}, got {value}.", param=name)
    return value


def _logit_bias(raw: dict[str, float] | None) -> dict[int, float]:
    """OpenAI's ``{"<token id>": bias}`` (string keys, as JSON has them)."""
    out: dict[int, float] = {}
    for key, bias in (raw or {}).items():
        try:
            token = int(key)
        except ValueError:
            raise InvalidRequest(f"'logit_bias' keys must be token ids, got {key!r}.",
                                 param="logit_bias") from None
        if token < 0:
            raise InvalidRequest("'logit_bias' maps token ids to numbers in -100..100.",
                                 param="logit_bias")
        out[token] = float(bias)
    return out


def _prompt(prompt: str | list[str | int]) -> str | list[int]:
    """One prompt: a string, an array with one string, or token ids."""
    if isinstance(prompt, str):
        return prompt
    if len(prompt) == 1 and isinstance(prompt[0], str):
        return prompt[0]
    tokens = [t for t in prompt if isinstance(t, int)]
    if not prompt or len(tokens) != len(prompt):
        raise InvalidRequest("'prompt' must be a string, an array with one string, or an "
                             "array of token ids (one prompt per request).", param="prompt")
    return tokens


def _message(msg: Message, where: str) -> dict:
    """A message as the chat template takes it: text content, developer as system."""
    out: dict[str, Any] = {"role": "system" if msg.role == "developer" else msg.role,
                           "content": _content(msg.content)}
    if msg.role == "tool":
        if not msg.tool_call_id:
            raise InvalidRequest(f"'{where}.tool_call_id' is required for role 'tool'.",
                                 param=f"{where}.tool_call_id")
        out["tool_call_id"] = msg.tool_call_id
    if msg.role == "assistant" and msg.tool_calls is not None:
        out["tool_calls"] = structured.message_tool_calls(msg.tool_calls, f"{where}.tool_calls")
    return out


def _content(content: str | list[protocol.TextPart] | None) -> str:
    """Message content as text: a string or the text parts joined."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(part.text for part in content)
