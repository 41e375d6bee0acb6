"""The shapes every function shares, as protocol types: OpenAI's error and model list, the
CloudEvent envelope, token usage.

Declared once here; ``llmfn.openapi`` writes them into each function's document, and the code
that answers with them builds them from these types.
"""
from __future__ import annotations

from typing import Annotated, Any, Literal

from .protocol import UNSET, Meta, Model, UnsetType

__all__ = ["ErrorDetail", "Error", "ModelCard", "ModelList", "StructuredCloudEvent", "Usage"]


class ErrorDetail(Model):
    """What went wrong: ``param`` names the request field, ``code`` the kind of error."""
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class Error(Model):
    """OpenAI's error shape."""
    error: ErrorDetail


class ModelCard(Model, kw_only=True):
    """OpenAI's model object: the one model the function serves."""
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "llmfn"


class ModelList(Model, kw_only=True):
    """OpenAI's model list."""
    object: Literal["list"] = "list"
    data: list[ModelCard]


class StructuredCloudEvent(Model):
    """A CloudEvent in structured mode (``application/cloudevents+json``, CloudEvents 1.0)."""
    specversion: Literal["1.0"]
    id: str
    source: str
    type: str
    time: str | UnsetType = UNSET
    datacontenttype: str | UnsetType = UNSET
    subject: str | UnsetType = UNSET
    data: Any = UNSET


Count = Annotated[int, Meta(ge=0)]


class Usage(Model, kw_only=True):
    """Tokens the request used."""
    prompt_tokens: Count
    completion_tokens: Count | UnsetType = UNSET
    total_tokens: Count
