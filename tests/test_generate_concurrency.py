"""Many streams per pod, end to end: generate under gunicorn with SLOTS=4 and SmolLM2-135M.

Concurrent SSE streams from the official openai client each get their own clear-margin
answer (scripts/kernel_noise.py), /metrics proves they were decoded together, and
SIGTERM with every slot busy lets every stream finish before the process exits 0.
"""
from __future__ import annotations

import json
import re
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from openai import OpenAI

from scripts import procs
from scripts.kernel_noise import CLEAR_PROMPTS
from scripts.model_files import smollm2_path
from scripts.procs import ServerProcess

SLOTS = 4
WAIT_S = 120


def start_generate(tmp_path, **env) -> ServerProcess:
    env = {"MODEL_URI": f"file://{smollm2_path()}", "MODEL_CACHE_DIR": str(tmp_path / "cache"),
           "N_THREADS": "2", "OMP_WAIT_POLICY": "passive", "SLOTS": str(SLOTS),
           "QUEUE_SIZE": "4", "N_CTX": "1024", "K_SINK": "", **env}
    server = procs.gunicorn_server("generate", procs.free_port(), env=env,
                                   log_path=tmp_path / "gunicorn.log").start()
    server.wait_ready(180)
    return server


@pytest.fixture(scope="module")
def generate(tmp_path_factory):
    server = start_generate(tmp_path_factory.mktemp("generate"))
    yield server
    server.stop()


def stream_answer(client: OpenAI, entry) -> str:
    """One clear prompt as a stream (chat or completion); the concatenated text."""
    args = {"model": client.models.list().data[0].id, "max_tokens": entry.tokens,
            "temperature": 0, "stream": True}
    if entry.messages is not None:
        chunks = client.chat.completions.create(messages=entry.messages, **args)
        return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    chunks = client.completions.create(prompt=entry.prompt, **args)
    return "".join(c.choices[0].text for c in chunks if c.choices)


def metric(text: str, name: str) -> float:
    return float(re.search(rf"^{re.escape(name)} (\S+)$", text, re.M).group(1))


def test_concurrent_streams_each_get_their_own_answer(generate):
    client = OpenAI(base_url=f"{generate.url}/v1", api_key="unused", max_retries=0,
                    timeout=WAIT_S)
    assert len(CLEAR_PROMPTS) >= SLOTS
    entries = (CLEAR_PROMPTS * 2)[:2 * SLOTS]
    with ThreadPoolExecutor(len(entries)) as pool:
        answers = list(pool.map(lambda e: stream_answer(client, e), entries))
    for entry, text in zip(entries, answers):
        assert text.startswith(entry.expected), (entry.name, text)
    metrics = requests.get(f"{generate.url}/metrics", timeout=10).text
    steps = metric(metrics, "llmfn_decode_batch_sequences_count")
    alone = metric(metrics, 'llmfn_decode_batch_sequences_bucket{le="1.0"}')
    assert steps - alone > 0, "no llama_decode ever held two sequences"
    assert metric(metrics, "llmfn_slots") == SLOTS
    assert metric(metrics, "llmfn_slots_busy") == 0


def test_sigterm_drains_every_slot(tmp_path):
    """SIGTERM with SLOTS streams running: each ends with [DONE]; the process exits 0."""
    server = start_generate(tmp_path, SHUTDOWN_GRACE_S="60")
    streams, started = [], threading.Barrier(SLOTS + 1, timeout=WAIT_S)

    def one(i: int) -> list[bytes]:
        resp = requests.post(f"{server.url}/v1/completions", stream=True, timeout=WAIT_S,
                             json={"prompt": f"{i}. Once upon a time", "max_tokens": 48,
                                   "temperature": 0, "stream": True})
        lines = resp.iter_lines()
        first = next(line for line in lines if line.startswith(b"data: {"))
        started.wait()
        return [first, *(line for line in lines if line)]

    try:
        with ThreadPoolExecutor(SLOTS) as pool:
            futures = [pool.submit(one, i) for i in range(SLOTS)]
            started.wait()  # every stream has its first token
            code = server.stop(90)
            streams = [f.result(WAIT_S) for f in futures]
    finally:
        server.stop()
    assert code == 0, server.log_tail()
    for lines in streams:
        assert lines[-1] == b"data: [DONE]", server.log_tail()
        finish = json.loads(lines[-2][6:])["choices"][0]["finish_reason"]
        assert finish in ("stop", "length")


def test_empty_prompt_starts_from_bos(generate):
    """SmolLM2's vocab adds no BOS, so "" tokenizes to nothing: generate starts from BOS."""
    r = requests.post(f"{generate.url}/v1/completions", timeout=WAIT_S,
                      json={"prompt": "", "max_tokens": 2})
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["prompt_tokens"] == 1
