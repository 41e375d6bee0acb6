"""The generate Knative Function: OpenAI-compatible text generation on llama.cpp (CPU).

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
from .settings import DEFAULTS, FUNCTION, GenerateSettings

SPEC = FunctionSpec(
    name=FUNCTION,
    settings=GenerateSettings.from_mapping,
    defaults=DEFAULTS,
    model=make_loader,
    routes=api.register,
    events={
        "dev.llmfn.chat.completion.requested.v1": RequestEvent(
            "/v1/chat/completions", "dev.llmfn.chat.completion.v1", seeded=True),
        "dev.llmfn.completion.requested.v1": RequestEvent(
            "/v1/completions", "dev.llmfn.completion.v1", seeded=True),
    },
    page=Page("/", STATIC / "generate.html", "playground"),  # POST / stays the events'
    local=Local(port=8081, model="smollm2-135m-instruct-q4_1.gguf"),
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
