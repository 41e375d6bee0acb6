"""The generate function: OpenAI-compatible text generation on llama.cpp (CPU).

``early`` is imported first, so the weight download starts before the heavy imports of
``func`` (func-python and gunicorn's ``function.wsgi`` both import this package first)."""
from . import early
from .func import SPEC, new

__all__ = ["SPEC", "early", "new"]
