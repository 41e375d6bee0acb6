"""The generate Knative Function: OpenAI-compatible text generation on llama.cpp (CPU)."""
from __future__ import annotations

import functools
from typing import Mapping

from llmfn.host import prefetch, preload

from .settings import DEFAULTS

prefetch(**DEFAULTS)  # the weight download starts now, on a thread, before the imports below

from .engine import load_engine  # noqa: E402  (llama_cpp, numpy: what the load needs)
from .settings import FUNCTION, GenerateSettings  # noqa: E402


def make_loader(cfg: Mapping[str, str]):
    """The model loader that ``cfg``'s settings call for."""
    return functools.partial(load_engine, gen=GenerateSettings.from_mapping(cfg))


preload(make_loader, **DEFAULTS)  # the model loads as soon as the file is there, on a thread

from llmfn.function import LLMFunction  # noqa: E402  (the web stack imports meanwhile)
from llmfn.model_runtime import Runtime  # noqa: E402
from llmfn.settings import Settings  # noqa: E402

from . import api  # noqa: E402


def create_runtime(cfg: Mapping[str, str]) -> Runtime:
    """Build the process's Runtime from a config mapping (func's ``cfg`` or the environment)."""
    settings = Settings.from_mapping(cfg, **DEFAULTS)
    gen = GenerateSettings.from_mapping(cfg)
    return Runtime(settings.server.function or FUNCTION, settings, loader=make_loader(cfg),
                   register=functools.partial(api.register, gen=gen))


def new() -> LLMFunction:
    """Called by func-python once per process to create the function instance.

    The instance's ``start(cfg)`` (called before the server listens) begins the weight pull and
    model load in the background; ``ready()`` turns True once the model is loaded.
    """
    return LLMFunction(create_runtime, FUNCTION)
