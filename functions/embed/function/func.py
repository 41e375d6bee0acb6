"""The embed Knative Function: OpenAI-compatible /v1/embeddings on llama.cpp (CPU), batched."""
from __future__ import annotations

import functools
from typing import Mapping

from llmfn.host import prefetch, preload

from .settings import DEFAULTS

prefetch(**DEFAULTS)  # the weight download starts now, on a thread, before the imports below

from .engine import load_embedder  # noqa: E402  (llama_cpp, numpy: what the load needs)

preload(lambda cfg: load_embedder, **DEFAULTS)  # the model loads as soon as the file is there

from llmfn.function import LLMFunction  # noqa: E402  (the web stack imports meanwhile)
from llmfn.model_runtime import Runtime  # noqa: E402
from llmfn.settings import Settings  # noqa: E402

from . import api  # noqa: E402
from .settings import FUNCTION, EmbedSettings  # noqa: E402


def create_runtime(cfg: Mapping[str, str]) -> Runtime:
    """Build the process's Runtime from a config mapping (func's ``cfg`` or the environment)."""
    settings = Settings.from_mapping(cfg, **DEFAULTS)
    embed = EmbedSettings.from_mapping(cfg)
    return Runtime(settings.server.function or FUNCTION, settings,
                   loader=load_embedder,
                   register=functools.partial(api.register, embed=embed))


def new() -> LLMFunction:
    """Called by func-python once per process to create the function instance.

    The instance's ``start(cfg)`` (called before the server listens) begins the weight pull and
    model load in the background; ``ready()`` turns True once the model is loaded.
    """
    return LLMFunction(create_runtime, FUNCTION)
