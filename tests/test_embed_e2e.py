"""End to end: gunicorn + real MinIO + all-MiniLM-L6-v2 (f16 GGUF), and the func-python path.

The 14 reference embeddings (sentence-transformers, mean pooling, normalized) are matched over
HTTP with cosine >= 0.999; the official openai client's default base64 path decodes the same
vectors; concurrent requests merged by the batcher get their own rows back.
"""
from __future__ import annotations

import json
import re
import threading
from pathlib import Path

import numpy as np
import pytest
import requests
from openai import OpenAI

from scripts import procs
from scripts.procs import REPO_ROOT as ROOT
from scripts.upload_model import upload
from tests.support.calls import WAIT_S, embed

BUCKET, KEY = "models", "all-minilm-l6-v2-f16.gguf"
MODEL = "all-minilm-l6-v2-f16"
GOLDEN = ROOT / "tests" / "fixtures" / "minilm_reference_embeddings.json"
MIN_COSINE = 0.999


def golden() -> list[dict]:
    return json.loads(GOLDEN.read_text(encoding="utf-8"))["items"]


def cosine(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.fixture(scope="module")
def minilm_path() -> Path:
    path = ROOT / ".state" / "models" / KEY
    assert path.is_file(), "run `make models` (scripts/convert_minilm.py)"
    return path


@pytest.fixture(scope="module")
def server(minio, minilm_path, sink, tmp_path_factory):
    """gunicorn embed pulling its weights from MinIO, as `make run` and the container do."""
    upload(minio.client(), str(minilm_path), BUCKET, KEY)
    tmp = tmp_path_factory.mktemp("embed")
    env = {**minio.client_env(), "MODEL_URI": f"s3://{BUCKET}/{KEY}",
           "MODEL_CACHE_DIR": str(tmp / "cache"), "N_THREADS": "2", "K_SINK": sink.url,
           "BATCH_WINDOW_MS": "20", "GUNICORN_THREADS": "12"}
    proc = procs.gunicorn_server("embed", procs.free_port(), env=env,
                                 log_path=tmp / "gunicorn.log").start()
    try:
        proc.wait_ready(180)
        proc.env_for_tests = env
        yield proc
    finally:
        assert proc.stop() == 0


def test_matches_reference_embeddings(server):
    items = golden()
    assert len(items) == 14
    body = embed(server.url, input=[it["text"] for it in items], model=MODEL).json()
    for it, got in zip(items, body["data"]):
        assert cosine(got["embedding"], it["embedding"]) >= MIN_COSINE, it["text"]
    for it in items[:3]:  # one input per request: the same vectors
        one = embed(server.url, input=it["text"]).json()["data"][0]["embedding"]
        assert cosine(one, it["embedding"]) >= MIN_COSINE


def test_openai_client_base64_round_trip(server):
    client = OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
    assert client.models.list().data[0].id == MODEL
    texts = [it["text"] for it in golden()[:4]]
    default = client.embeddings.create(model=MODEL, input=texts)  # the client asks for base64
    floats = client.embeddings.create(model=MODEL, input=texts, encoding_format="float")
    assert default.usage.prompt_tokens == floats.usage.prompt_tokens > 0
    for a, b, it in zip(default.data, floats.data, golden()):
        assert len(a.embedding) == 384
        assert np.allclose(a.embedding, b.embedding, atol=1e-6)
        assert cosine(a.embedding, it["embedding"]) >= MIN_COSINE
    raw = client.embeddings.with_raw_response.create(model=MODEL, input="x",
                                                     encoding_format="base64")
    assert isinstance(json.loads(raw.text)["data"][0]["embedding"], str)


def test_concurrent_requests_get_their_own_embeddings(server):
    """12 clients at once, distinct inputs: merged into shared calls, split back correctly."""
    texts = [f"request {i}: " + " ".join(["alpha", "beta", "gamma", "delta"][: 1 + i % 4])
             for i in range(12)]
    alone = {t: embed(server.url, input=[t, t + "?"]).json()["data"] for t in texts}
    before = batch_requests(server.url)
    barrier = threading.Barrier(len(texts))
    got: dict[str, list] = {}

    def call(t: str) -> None:
        barrier.wait(WAIT_S)
        got[t] = embed(server.url, input=[t, t + "?"]).json()["data"]

    threads = [threading.Thread(target=call, args=(t,)) for t in texts]
    for th in threads:
        th.start()
    for th in threads:
        th.join(WAIT_S)
    assert sorted(got) == sorted(texts)
    for t in texts:
        assert [d["index"] for d in got[t]] == [0, 1]
        for mine, ref in zip(got[t], alone[t]):
            assert cosine(mine["embedding"], ref["embedding"]) > 0.9999
    calls, requests_served = (a - b for a, b in zip(batch_requests(server.url), before))
    assert requests_served == len(texts) and calls < len(texts)  # some calls were shared


def batch_requests(url: str) -> tuple[float, float]:
    """(model calls, requests served by them) from the batcher's histogram."""
    text = requests.get(f"{url}/metrics", timeout=5).text
    count = float(re.search(r"^llmfn_embed_batch_requests_count (\S+)$", text, re.M).group(1))
    total = float(re.search(r"^llmfn_embed_batch_requests_sum (\S+)$", text, re.M).group(1))
    return count, total


def test_limits_and_error_shape(server):
    r = embed(server.url, input=["ok", "word " * 600])
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "input[1]"
    assert r.json()["error"]["code"] == "context_length_exceeded"
    big = requests.post(f"{server.url}/v1/embeddings", timeout=WAIT_S,
                        data=json.dumps({"input": "a " * 600_000}),
                        headers={"Content-Type": "application/json"})
    assert big.status_code == 413 and big.json()["error"]["code"] == "request_too_large"
    assert embed(server.url, input="x", model="nope").status_code == 404


def test_events_one_per_request_cold_start_once(server, sink):
    data = sink.event_data(embed(server.url, input=["last"]).headers["X-Request-Id"])
    assert data["function"] == "embed" and data["input_count"] == 1 and data["status"] == 200
    served = [e["data"] for e in sink.events() if e["data"]["status"] == 200]
    assert served[0]["cold_start"] is True
    assert all(e["cold_start"] is False for e in served[1:])
    assert all(e["model"] == MODEL for e in served)
    assert {e["data"]["error_code"] for e in sink.events()} >= {None, "context_length_exceeded"}


def test_func_python_path(server, minilm_path, tmp_path):
    """func's Python scaffolding: ``func_python.http.serve(new)`` on a file:// model."""
    env = {"MODEL_URI": f"file://{minilm_path}", "MODEL_CACHE_DIR": str(tmp_path / "cache"),
           "N_THREADS": "2", "K_SINK": ""}
    proc = procs.func_python_server("embed", procs.free_port(), env=env,
                                    log_path=tmp_path / "func.log").start()
    try:
        proc.wait_ready(180)
        items = golden()
        body = embed(proc.url, input=[it["text"] for it in items]).json()
        for it, got in zip(items, body["data"]):
            assert cosine(got["embedding"], it["embedding"]) >= MIN_COSINE
        assert requests.get(f"{proc.url}/v1/models", timeout=5).json()["data"][0]["id"] == MODEL
        assert embed(proc.url, input=[]).status_code == 400
    finally:
        assert proc.stop() == 0
