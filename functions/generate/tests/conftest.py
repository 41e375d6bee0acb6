"""Fixtures: the generate app built from test settings on the real tiny GGUF model."""
from __future__ import annotations

from pathlib import Path

import pytest

# `function` is this folder's package: `make test` runs `python -m pytest` from the folder
from function.func import create_runtime
from tests.support.models import model_file
from tests.support.runtimes import RuntimeFactory


@pytest.fixture(scope="session")
def tiny_model() -> Path:
    """The synthetic tiny LLaMA GGUF (made by scripts/make_tiny_model.py if missing)."""
    return model_file("tiny-llama.gguf", "make_tiny_model.py")


@pytest.fixture(scope="session")
def smol_vocab():
    """SmolLM2's llama.cpp vocabulary (the GGUF loaded vocab only, no weights)."""
    import llama_cpp
    from llama_cpp import _internals as internals

    from llmfn.llama_backend import ensure_cpu_backend
    from scripts.model_files import smollm2_path

    ensure_cpu_backend()
    params = internals.LlamaModel.default_params()
    params.vocab_only = True
    model = internals.LlamaModel(path_model=str(smollm2_path()), params=params, verbose=False)
    yield llama_cpp.llama_model_get_vocab(model.model)
    model.close()


@pytest.fixture(scope="session")
def smol_tokenizer(smol_vocab):
    """llguidance's tokenizer of SmolLM2's vocabulary."""
    import llama_cpp

    from function import constraint
    n_vocab = llama_cpp.llama_vocab_n_tokens(smol_vocab)
    eog = [t for t in range(n_vocab) if llama_cpp.llama_vocab_is_eog(smol_vocab, t)]
    return constraint.tokenizer_from_vocab(smol_vocab, eog)


@pytest.fixture
def make_runtime(tiny_model, tmp_path):
    """Build (and stop at teardown) a started Runtime; keyword args are settings keys."""
    factory = RuntimeFactory(create_runtime, {
        "MODEL_URI": f"file://{tiny_model}", "MODEL_CACHE_DIR": str(tmp_path / "cache"),
        "N_CTX": "256", "N_THREADS": "1", "SHUTDOWN_GRACE_S": "5", "EVENTS_FLUSH_S": "2"})
    yield factory
    factory.stop_all()


@pytest.fixture
def runtime(make_runtime):
    return make_runtime()


@pytest.fixture
def client(runtime):
    return runtime.app.test_client()


@pytest.fixture
def hold_first_step():
    """``hold_first_step(scheduler, release)``: hold ``scheduler`` before its first step until
    ``release`` is set (its engine getter is an injected collaborator, called once when the
    first request arrives)."""
    def hold(scheduler, release) -> None:
        get = scheduler._get_engine

        def held():
            assert release.wait(60), "the test never released the scheduler"
            return get()

        scheduler._get_engine = held

    return hold
