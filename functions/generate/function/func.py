"""The generate Knative Function: OpenAI-compatible text generation on llama.cpp (CPU)."""
from __future__ import annotations

from typing import Mapping

from llmfn.function import LLMFunction
from llmfn.runtime import Runtime
from llmfn.settings import Settings

from . import api
from .engine import load_llama

FUNCTION = "generate"


def create_runtime(cfg: Mapping[str, str]) -> Runtime:
    """Build the process's Runtime from a config mapping (func's ``cfg`` or the environment)."""
    settings = Settings.from_mapping(cfg, FUNCTION_NAME=FUNCTION)
    return Runtime(FUNCTION, settings, loader=load_llama, register=api.register)


def new() -> LLMFunction:
    """Called by func-python once per process to create the function instance.

    The instance's ``start(cfg)`` (called before the server listens) begins the weight pull and
    model load in the background; ``ready()`` turns True once the model is loaded.
    """
    return LLMFunction(create_runtime)
