"""The model loader of embed's contract (func.py), apart so that ``early.py`` can use it before
the web stack is imported."""
from __future__ import annotations

from collections.abc import Mapping

from llmfn.host import Loader


def make_loader(cfg: Mapping[str, str]) -> Loader:
    """The model loader (the same for every ``cfg``). It imports llama.cpp and numpy (what the
    load needs) only when called: at cold start, once the weight download already runs
    (``early.py``)."""
    from .engine import load_embedder

    return load_embedder
