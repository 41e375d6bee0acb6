"""The embed Knative Function: OpenAI-compatible /v1/embeddings on llama.cpp (CPU), batched.

``SPEC`` is its contract (``llmfn.contract``): llmfn builds the runtime, func-python's
``new()`` and gunicorn's app (``wsgi.py``) from it.
"""
from __future__ import annotations

from collections.abc import Mapping

from llmfn import runtime
from llmfn.contract import FunctionSpec, Local, Page, RequestEvent
from llmfn.function import LLMFunction
from llmfn.pages import STATIC

from . import api
from .loader import make_loader
from .settings import DEFAULTS, FUNCTION, EmbedSettings

SPEC = FunctionSpec(
    name=FUNCTION,
    settings=EmbedSettings.from_mapping,
    defaults=DEFAULTS,
    model=make_loader,
    routes=api.register,
    events={"dev.llmfn.embeddings.requested.v1": RequestEvent(
        "/v1/embeddings", "dev.llmfn.embeddings.v1")},
    page=Page("/", STATIC / "embed.html", "playground"),  # POST / stays the events'
    local=Local(port=8082, model="all-minilm-l6-v2-f16.gguf"),
)


def new() -> LLMFunction:
    """Called by func-python once per process to create the function instance.

    The instance's ``start(cfg)`` (called before the server listens) begins the weight pull and
    model load in the background; ``ready()`` turns True once the model is loaded.
    """
    return LLMFunction(SPEC)


def create_runtime(cfg: Mapping[str, str]) -> runtime.BaseRuntime:
    """The runtime from a config mapping (func's ``cfg`` or the environment); a SettingsError
    names a setting it cannot use (tests build their runtimes with it)."""
    return runtime.create_runtime(SPEC, cfg)
