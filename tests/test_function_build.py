"""A function folder builds alone: copy it, vendor llmfn, pip install it into a fresh venv,
and serve it exactly as func's Python scaffolding does (``func_python.http.serve(new)``).

pip reuses the llama-cpp-python wheel it cached when `make venv` built it.
"""
from __future__ import annotations

import shutil
import subprocess
import sys

import requests

import services
from tests.support.procs import ROOT, ServerProcess, func_python_cmd

IGNORE = shutil.ignore_patterns("__pycache__", "tests", ".func", "llmfn")


def test_generate_folder_builds_and_serves_alone(tmp_path):
    build = tmp_path / "generate"
    shutil.copytree(ROOT / "functions" / "generate", build, ignore=IGNORE, symlinks=True)
    assert not any(p.is_symlink() for p in build.rglob("*")), "symlinks leave the build context"
    # what `make vendor` does
    shutil.copytree(ROOT / "llmfn" / "src" / "llmfn", build / "llmfn",
                    ignore=shutil.ignore_patterns("__pycache__"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = str(venv / "bin" / "python")
    subprocess.run([py, "-m", "pip", "install", "-q", str(build)], check=True, timeout=1500)
    # the installed copy is what runs: import it from a directory that has no sources
    probe = subprocess.run([py, "-c", "import function, llmfn; print(function.__file__)"],
                           cwd=tmp_path, capture_output=True, text=True, check=True)
    assert "site-packages" in probe.stdout

    tiny = ROOT / ".state" / "models" / "tiny-llama.gguf"
    port = services.free_port()
    server = ServerProcess(func_python_cmd(py), port=port, cwd=tmp_path,
                           env={"MODEL_URI": f"file://{tiny}", "N_CTX": "256",
                                "MODEL_CACHE_DIR": str(tmp_path / "cache"), "K_SINK": ""},
                           log_path=tmp_path / "serve.log").start()
    try:
        server.wait_ready(120)
        r = requests.post(f"{server.url}/v1/completions", timeout=60,
                          json={"prompt": "hello", "max_tokens": 3})
        assert r.status_code == 200, server.log_tail()
        assert r.json()["usage"]["completion_tokens"] == 3
    finally:
        assert server.stop() == 0
