"""embed's protocol: the request and response of POST /v1/embeddings, as types.

:class:`EmbeddingRequest` is what :func:`~llmfn.protocol.decode` checks (schema.py then checks
what a type cannot say: the items of ``input``, the served model, the dimensions, the number
of inputs); :class:`EmbeddingList` is the answer. :data:`OPERATIONS` writes the OpenAPI
document from them (``llmfn.openapi.function_document``). Imports only llmfn: tools load this
module by path.
"""
from __future__ import annotations

from typing import Annotated, Any, Literal

from llmfn import openapi
from llmfn.openapi import Operation
from llmfn.protocol import UNSET, Meta, Model, Request, UnsetType
from llmfn.shapes import Usage

ENCODINGS = ("float", "base64")

_TOKENS = {"type": "array", "minItems": 1, "items": {"type": "integer", "minimum": 0}}
Input = Annotated[str | list[Any], Meta(
    description="a string (an empty string is embedded), an array of strings (at most "
    "`MAX_INPUTS`), an array of token ids, or an array of token id arrays",
    extra_json_schema={"oneOf": [{"type": "string"},
                                 {"type": "array", "minItems": 1, "items": {"type": "string"}},
                                 _TOKENS,
                                 {"type": "array", "minItems": 1, "items": _TOKENS}]})]


class EmbeddingRequest(Request, forbid_unknown_fields=False):
    """The body of POST /v1/embeddings. Unknown keys are ignored."""
    input: Input
    model: Annotated[str | None, Meta(
        description="optional; must name the served model (404 otherwise)")] | UnsetType = UNSET
    encoding_format: Annotated[str | None, Meta(
        description="base64: little-endian float32",
        extra_json_schema={"enum": [*ENCODINGS, None]})] | UnsetType = UNSET
    dimensions: Annotated[Annotated[int, Meta(ge=1)] | None, Meta(
        description="only the model's own (384 for MiniLM)")] | UnsetType = UNSET
    user: Annotated[str | None, Meta(description="ignored")] | UnsetType = UNSET


class Embedding(Model, kw_only=True):
    """One input's vector."""
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: Annotated[list[float] | str, Meta(
        description="floats, or with `encoding_format: base64` their little-endian float32 "
        "bytes in base64")]


class EmbeddingList(Model, kw_only=True):
    """The answer of POST /v1/embeddings: one vector per input, in input order."""
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: Usage


# -- the document ---------------------------------------------------------------------------------
TITLE = "llmfn embed"
DESCRIPTION = ("OpenAI-compatible embeddings on llama.cpp (README.md \"embed\", "
               "docs/embeddings.md).")
OPERATIONS = [
    openapi.page("/"),
    Operation("/v1/embeddings", "post", "createEmbedding", "Embeddings (OpenAI /v1/embeddings)",
              ("embed",), request=EmbeddingRequest, response=EmbeddingList,
              errors=(400, 401, 404, 429, 503), headers=("X-Request-Id",),
              returns="one vector per input, in input order"),
]
"""embed's own routes (``llmfn.openapi.function_document`` adds the shared ones)."""
