"""Fixtures: the embed app built from test settings on the real MiniLM GGUF."""
from __future__ import annotations

from pathlib import Path

import pytest

# `function` is this folder's package: `make test` runs `python -m pytest` from the folder
from function.engine import load_embedder
from function.func import create_runtime
from llmfn.settings import ModelSettings
from tests.support.models import model_file
from tests.support.runtimes import RuntimeFactory


@pytest.fixture(scope="session")
def minilm_model() -> Path:
    """all-MiniLM-L6-v2 as f16 GGUF (made by scripts/convert_minilm.py if missing)."""
    return model_file("all-minilm-l6-v2-f16.gguf", "convert_minilm.py")


@pytest.fixture(scope="session")
def embedder(minilm_model):
    """The real model loaded once for the engine and batcher tests."""
    engine = load_embedder(str(minilm_model), ModelSettings(n_ctx=512, n_batch=2048,
                                                            n_ubatch=2048, n_threads=2))
    yield engine
    engine.close()


@pytest.fixture
def make_runtime(minilm_model, tmp_path):
    """Build (and stop at teardown) a started Runtime; keyword args are settings keys."""
    factory = RuntimeFactory(create_runtime, {
        "MODEL_URI": f"file://{minilm_model}", "MODEL_CACHE_DIR": str(tmp_path / "cache"),
        "N_THREADS": "2", "SHUTDOWN_GRACE_S": "5", "EVENTS_FLUSH_S": "2"})
    yield factory
    factory.stop_all()


@pytest.fixture(scope="module")
def runtime(minilm_model, tmp_path_factory):
    """One started runtime with default settings, shared by a module's read-only tests."""
    cfg = {"MODEL_URI": f"file://{minilm_model}",
           "MODEL_CACHE_DIR": str(tmp_path_factory.mktemp("cache")), "N_THREADS": "2",
           "SHUTDOWN_GRACE_S": "5", "MAX_INPUTS": "8", "MAX_REQUEST_BYTES": "65536"}
    rt = create_runtime(cfg)
    rt.start()
    assert rt.host.wait(60), rt.ready()
    yield rt
    rt.stop()


@pytest.fixture
def client(runtime):
    return runtime.app.test_client()
