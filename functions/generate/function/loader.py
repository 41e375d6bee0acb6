"""The model loader of generate's contract (func.py), apart so that ``early.py`` can use it
before the web stack is imported."""
from __future__ import annotations

import functools
from collections.abc import Mapping

from llmfn.host import Loader

from .settings import GenerateSettings


def make_loader(cfg: Mapping[str, str]) -> Loader:
    """The model loader ``cfg``'s settings call for. It imports llama.cpp and numpy (what the
    load needs) only when called: at cold start, once the weight download already runs
    (``early.py``)."""
    from .engine import load_engine

    return functools.partial(load_engine, gen=GenerateSettings.from_mapping(cfg))
