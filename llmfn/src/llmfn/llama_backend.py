"""Make sure llama.cpp has a CPU backend before a model is loaded.

The portable build the images use (``-DGGML_BACKEND_DL=ON -DGGML_CPU_ALL_VARIANTS=ON``) ships
``libggml-cpu-<variant>.so`` files that ggml picks from at run time. ggml's default search
looks only in the executable's directory and the current directory; the llama-cpp-python
wheel puts them in ``site-packages/bin/``, so without this step loading a model fails with
"Failed to load model from file". A native build has the backend linked in: nothing to do.
"""
from __future__ import annotations

import contextlib
import ctypes
import logging
import re
import struct
import threading
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger(__name__)
_lock = threading.Lock()


def ensure_cpu_backend() -> str:
    """Load the CPU backend variants if ggml has none; returns how it got one."""
    import llama_cpp

    with _lock:
        llama_cpp.llama_backend_init()
        ggml = ctypes.CDLL(_mapped_libggml())  # the instance libllama uses, not another copy
        ggml.ggml_backend_reg_count.restype = ctypes.c_size_t
        if ggml.ggml_backend_reg_count() > 0:
            return "linked in or found by ggml's default search"
        site = Path(llama_cpp.__file__).parents[1]
        found = sorted(site.rglob("libggml-cpu-*.so"))
        if not found:
            raise RuntimeError(f"llama.cpp has no CPU backend: no libggml-cpu-*.so in {site}")
        ggml.ggml_backend_load_all_from_path.argtypes = [ctypes.c_char_p]
        ggml.ggml_backend_load_all_from_path(str(found[0].parent).encode())
        if ggml.ggml_backend_reg_count() == 0:
            raise RuntimeError(f"llama.cpp loaded no CPU backend from {found[0].parent}")
        how = f"loaded from {found[0].parent} (portable build)"
        log.info("llama.cpp CPU backend %s", how)
        return how


def _mapped_libggml() -> str:
    """Path of the libggml mapped into this process (a wheel holds copies, not symlinks, of
    libggml.so / .so.0 / .so.0.x: opening another copy would give a second ggml)."""
    with open("/proc/self/maps") as f:
        for line in f:
            m = re.search(r"(/\S*/libggml\.so[.0-9]*)$", line.strip())
            if m:
                return m.group(1)
    raise RuntimeError("libggml is not loaded")


GGUF_MAGIC = b"GGUF"


class ModelFileError(RuntimeError):
    """The weights file is not a model llama.cpp can load; the message says which and why."""


def _not_a_model(path: str, why: str) -> ModelFileError:
    return ModelFileError(
        f"the weights file {path} is not a valid GGUF model: {why}. A matching sha256 only "
        "proves it is the file that was uploaded: upload a valid GGUF to MODEL_URI")


def check_gguf_header(path: str) -> None:
    """ModelFileError unless ``path`` starts like a GGUF file (magic and a known version)."""
    with open(path, "rb") as f:
        head = f.read(8)
    if len(head) < 8 or head[:4] != GGUF_MAGIC:
        raise _not_a_model(path, f"it does not start with the GGUF magic (got {head[:4]!r})")
    version = struct.unpack("<I", head[4:])[0]
    if version not in (2, 3):
        raise _not_a_model(path, f"unsupported GGUF version {version}")


@contextlib.contextmanager
def model_file_errors(path: str) -> Iterator[None]:
    """Around llama.cpp's model load: check the header first, and turn llama.cpp's bare
    "Failed to load model from file" into a ModelFileError that says what is wrong."""
    check_gguf_header(path)
    try:
        yield
    except ValueError as err:
        if "load model" not in str(err):  # e.g. a context llama.cpp could not create
            raise
        raise _not_a_model(path, f"llama.cpp could not load it ({err})") from None
