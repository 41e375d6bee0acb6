"""llama.cpp has a CPU backend before a model loads (native build: linked in)."""
import ctypes

from llmfn import llama_backend


def test_cpu_backend_is_available():
    how = llama_backend.ensure_cpu_backend()
    assert how
    ggml = ctypes.CDLL(llama_backend._mapped_libggml())
    ggml.ggml_backend_reg_count.restype = ctypes.c_size_t
    assert ggml.ggml_backend_reg_count() > 0
    assert llama_backend.ensure_cpu_backend() == how  # idempotent
