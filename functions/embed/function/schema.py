"""Parsing and validating OpenAI embedding requests (unknown fields are ignored).

``input``: a string, an array of strings, an array of token ids (one input) or an array of such
arrays. Wrong types and values are a 400 naming the ``param``, as the OpenAI API answers them:
the types are protocol.py's :class:`~function.protocol.EmbeddingRequest`; what a type cannot
say (the items of ``input``, the served model, the model's dimensions) is checked here.
Differences from OpenAI, on purpose: an empty string is embedded (it is [CLS] [SEP] for BERT,
as sentence-transformers embeds it) instead of being rejected; token ids are the served
model's and are used exactly as given (no special tokens added).
"""
from __future__ import annotations

from dataclasses import dataclass

from llmfn.errors import InvalidRequest, ModelNotFound
from llmfn.protocol import decode, is_set

from .protocol import ENCODINGS, EmbeddingRequest


@dataclass
class Request:
    """One validated request: its inputs (texts or token id lists) and the answer format."""
    inputs: list[str] | list[list[int]]
    tokens_given: bool
    encoding_format: str


def parse(body: dict, *, model_id: str, n_embd: int, max_inputs: int) -> Request:
    """POST /v1/embeddings body -> Request (400/404 naming the param)."""
    model = body.get("model")  # first, as before: a wrong model is a 404 whatever else is wrong
    if isinstance(model, str) and model != model_id:
        raise ModelNotFound(f"The model '{model}' does not exist or you do not have access to "
                            "it.", param="model")
    req = decode(EmbeddingRequest, body)
    encoding = req.encoding_format if is_set(req.encoding_format) else "float"
    if encoding not in ENCODINGS:
        raise InvalidRequest(f"'encoding_format' must be one of {', '.join(ENCODINGS)}, got "
                             f"{encoding!r}.", param="encoding_format")
    if is_set(req.dimensions) and req.dimensions != n_embd:
        raise InvalidRequest(f"This model's embeddings have {n_embd} dimensions and cannot be "
                             f"shortened; 'dimensions' must be {n_embd} or omitted.",
                             param="dimensions")
    inputs, tokens_given = _inputs(req.input)
    if len(inputs) > max_inputs:
        raise InvalidRequest(f"'input' has {len(inputs)} items; at most {max_inputs} inputs are "
                             "allowed per request.", param="input")
    return Request(inputs=inputs, tokens_given=tokens_given, encoding_format=encoding)


def _is_token(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _inputs(value: str | list) -> tuple[list, bool]:
    if isinstance(value, str):
        return [value], False
    if not value:
        raise InvalidRequest("'input' must not be an empty array.", param="input")
    if all(isinstance(v, str) for v in value):
        return list(value), False
    if all(_is_token(v) for v in value):
        return [list(value)], True
    if all(isinstance(v, list) for v in value):
        for i, seq in enumerate(value):
            if not seq or not all(_is_token(t) for t in seq):
                raise InvalidRequest(f"'input[{i}]' must be a non-empty array of token ids "
                                     "(integers >= 0).", param=f"input[{i}]")
        return [list(v) for v in value], True
    raise InvalidRequest("'input' must be a string, an array of strings, an array of token ids "
                         "or an array of token id arrays.", param="input")
