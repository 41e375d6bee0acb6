"""Parsing and validating OpenAI completion and chat requests (unknown fields are ignored).

Wrong types and values are a 400 naming the ``param``, as the OpenAI API answers them.
"""
from __future__ import annotations

from dataclasses import dataclass

from llmfn.errors import InvalidRequest
from llmfn.webapp import param

from .engine import Params

MAX_STOP = 4
ROLES = ("system", "developer", "user", "assistant", "tool")


@dataclass
class Request:
    """One validated request: what to generate and how to answer."""
    params: Params
    max_tokens_given: bool
    stream: bool
    include_usage: bool
    prompt: str | list[int] | None = None
    messages: list[dict] | None = None


def common(body: dict, default_max_tokens: int) -> Request:
    """Parameters shared by /v1/completions and /v1/chat/completions."""
    max_tokens = param(body, "max_tokens", (int,), None, lo=1)
    if max_tokens is None and "max_completion_tokens" in body:
        max_tokens = param(body, "max_completion_tokens", (int,), None, lo=1)
    temperature = param(body, "temperature", (float,), 1.0, lo=0, hi=2)
    top_p = param(body, "top_p", (float,), 1.0, lo=0, hi=1)
    seed = param(body, "seed", (int,), None)
    stream = param(body, "stream", (bool,), False)
    n = param(body, "n", (int,), 1)
    if n != 1:
        raise InvalidRequest("Only n=1 is supported.", param="n")
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
                    top_p=float(top_p), stop=[s for s in stop if s], seed=seed)
    return Request(params=params, max_tokens_given=max_tokens is not None, stream=stream,
                   include_usage=include_usage)


def completion(body: dict, default_max_tokens: int) -> Request:
    """POST /v1/completions: `prompt` is a string, one-string array or token array."""
    req = common(body, default_max_tokens)
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
    return req


def chat(body: dict, default_max_tokens: int) -> Request:
    """POST /v1/chat/completions: `messages` with roles and text content."""
    req = common(body, default_max_tokens)
    messages = param(body, "messages", (list,))
    if not messages:
        raise InvalidRequest("'messages' must be a non-empty array.", param="messages")
    clean = []
    for i, msg in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(msg, dict):
            raise InvalidRequest(f"'{where}' must be an object.", param=where)
        role = msg.get("role")
        if role not in ROLES:
            raise InvalidRequest(f"'{where}.role' must be one of {', '.join(ROLES)}.",
                                 param=f"{where}.role")
        clean.append({"role": "system" if role == "developer" else role,
                      "content": _content(msg.get("content"), f"{where}.content")})
    req.messages = clean
    return req


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
