"""llama.cpp has a CPU backend before a model loads (native build: linked in)."""
import ctypes

import pytest

from llmfn import llama_backend


def test_cpu_backend_is_available():
    how = llama_backend.ensure_cpu_backend()
    assert how
    ggml = ctypes.CDLL(llama_backend._mapped_libggml())
    ggml.ggml_backend_reg_count.restype = ctypes.c_size_t
    assert ggml.ggml_backend_reg_count() > 0
    assert llama_backend.ensure_cpu_backend() == how  # idempotent


def test_a_file_that_is_not_a_gguf_model_fails_with_a_clear_message(tmp_path):
    """Right magic and version but garbage after it, or no GGUF at all: ModelFileError naming
    the file and saying it is not a valid GGUF model (not llama.cpp's bare message)."""
    import os
    import struct

    import llama_cpp
    from llama_cpp import _internals as internals

    from llmfn.llama_backend import ModelFileError, ensure_cpu_backend, model_file_errors

    ensure_cpu_backend()
    garbage = tmp_path / "garbage.gguf"
    garbage.write_bytes(b"GGUF" + struct.pack("<I", 3) + os.urandom(4096))
    text = tmp_path / "text.gguf"
    text.write_bytes(b"<html>not found</html>")
    for path, why in ((garbage, "llama.cpp could not load it"), (text, "GGUF magic")):
        with pytest.raises(ModelFileError) as err:
            with model_file_errors(str(path)):
                internals.LlamaModel(path_model=str(path),
                                     params=llama_cpp.llama_model_default_params(),
                                     verbose=False)
        assert f"{path} is not a valid GGUF model" in str(err.value)
        assert why in str(err.value) and "MODEL_URI" in str(err.value)
