"""Each function folder builds alone: copy it, vendor llmfn, pip install it into a fresh venv,
and serve it exactly as func's Python scaffolding does (``func_python.<invoke>.serve(new)``,
``invoke`` from its func.yaml), then answer one real request.

pip reuses the llama-cpp-python wheel it cached when `make venv` built it.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import uuid

import pytest
import requests
import yaml

from scripts import procs
from scripts.procs import REPO_ROOT as ROOT

IGNORE = shutil.ignore_patterns("__pycache__", "tests", ".func", "llmfn")
MODELS = ROOT / ".state" / "models"


def build_alone(name: str, tmp_path) -> str:
    """The folder copied and vendored as `func build` sees it, installed in a fresh venv;
    returns the venv's python."""
    build = tmp_path / name
    shutil.copytree(ROOT / "functions" / name, build, ignore=IGNORE, symlinks=True)
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
    return py


def completion(url: str) -> None:
    r = requests.post(f"{url}/v1/completions", timeout=60,
                      json={"prompt": "hello", "max_tokens": 3})
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["completion_tokens"] == 3


def embedding(url: str) -> None:
    r = requests.post(f"{url}/v1/embeddings", timeout=60, json={"input": ["hello", "world"]})
    assert r.status_code == 200, r.text
    assert [len(d["embedding"]) for d in r.json()["data"]] == [384, 384]


def inference_event(url: str) -> None:
    from llmfn.events import INFERENCE_COMPLETED

    data = {"request_id": uuid.uuid4().hex, "function": "generate", "model": "m",
            "model_sha256": "0" * 64, "service": "", "revision": "", "endpoint": "/v1/completions",
            "status": 200, "error_code": None, "prompt_tokens": 3, "completion_tokens": 2,
            "input_count": 1, "ttft_s": 0.1, "duration_s": 0.2, "tokens_per_s": 10.0,
            "finish_reason": "stop", "cold_start": False, "stream": False,
            "time": "2026-11-29T00:00:00.000Z"}
    headers = {"ce-specversion": "1.0", "ce-id": data["request_id"], "ce-source": "/build-test",
               "ce-type": INFERENCE_COMPLETED, "content-type": "application/json"}
    r = requests.post(f"{url}/", headers=headers, data=json.dumps(data), timeout=60)
    assert r.status_code == 200, r.text


def pages_served(name: str, url: str) -> None:
    """The installed copy ships the pages' static files (package data): the function's page,
    /docs and the files they load answer 200."""
    page = "/dashboard" if name == "audit" else "/"
    for path in (page, "/docs", "/static/common.js", "/static/vendor/uplot/uPlot.iife.min.js"):
        r = requests.get(url + path, timeout=30)
        assert r.status_code == 200, (path, r.status_code, r.text[:200])


@pytest.mark.parametrize("name, env, check", [
    ("generate", {"MODEL_URI": f"file://{MODELS / 'tiny-llama.gguf'}", "N_CTX": "256"},
     completion),
    ("embed", {"MODEL_URI": f"file://{MODELS / 'all-minilm-l6-v2-f16.gguf'}"}, embedding),
    ("audit", {}, inference_event),
])
def test_function_folder_builds_and_serves_alone(name, env, check, tmp_path, request):
    py = build_alone(name, tmp_path)
    if name == "audit":
        env = {"MONGODB_URI": request.getfixturevalue("ferretdb").uri,
               "MONGODB_DATABASE": f"build_{uuid.uuid4().hex[:8]}"}
    invoke = yaml.safe_load((ROOT / "functions" / name / "func.yaml").read_text()).get(
        "invoke", "http")
    server = procs.func_python_server(tmp_path, procs.free_port(), python=py, module=invoke,
                                      env={**env, "MODEL_CACHE_DIR": str(tmp_path / "cache"),
                                           "K_SINK": ""},
                                      log_path=tmp_path / "serve.log").start()
    try:
        server.wait_ready(120)
        check(server.url)
        pages_served(name, server.url)
    finally:
        assert server.stop() == 0, server.log_tail()
