"""End to end: gunicorn + real MinIO + real SmolLM2-135M-Instruct, and the func-python path.

not ready -> ready, a chat question answered (streamed and not, the same text), the official
openai client against /v1 unchanged, events with cold-start flags, a client that disconnects
stops its generation, and func-python serves the same answers.

Exact text is asserted only for answers from scripts/kernel_noise.py's CLEAR_PROMPTS,
whose every greedy step leads by >= 3x LOGIT_TOLERANCE on every llama.cpp kernel path: a
near tie (0.10 logits for "What is the capital of France?") flips between CPUs (issue 9 §1).
"""
from __future__ import annotations

import json
import re
import socket

import filelock
import pytest
import requests
from openai import OpenAI

from llmfn.weights import cache_path
from scripts import procs
from scripts.model_files import smollm2_path
from scripts.upload_model import upload
from tests.support.calls import ANSWER, CLEAR, QUESTION, WAIT_S, chat

BUCKET, KEY = "models", "smollm2-135m-instruct-q4_1.gguf"
# Margins: the smallest lead of each asserted token, over kernel paths and CPU variants.
# ANSWER (tests/support/calls.py): "The Pythagorean theorem", 3 greedy steps, margin >= 6.15
SUN = CLEAR["earth_orbit"]  # "The Earth revolves around the" -> " Sun", margin 5.64
CHINA = CLEAR["great_wall"]  # "The Great Wall of" -> " China", margin 4.94


@pytest.fixture(scope="module")
def uploaded(minio):
    client = minio.client()
    sha = upload(client, str(smollm2_path()), BUCKET, KEY)
    return sha


@pytest.fixture(scope="module")
def generate(minio, uploaded, sink, tmp_path_factory):
    """gunicorn generate whose first download waits on a lock the test holds (not ready)."""
    tmp = tmp_path_factory.mktemp("generate")
    cache = tmp / "cache"
    lock = filelock.FileLock(str(cache_path(str(cache), BUCKET, KEY)) + ".lock")
    cache_path(str(cache), BUCKET, KEY).parent.mkdir(parents=True, exist_ok=True)
    lock.acquire()
    env = {**minio.client_env(), "MODEL_URI": f"s3://{BUCKET}/{KEY}",
           "MODEL_CACHE_DIR": str(cache), "N_THREADS": "2", "K_SINK": sink.url,
           "K_SERVICE": "generate", "K_REVISION": "generate-00001", "RETRY_AFTER_S": "4"}
    server = procs.gunicorn_server("generate", procs.free_port(), env=env,
                                   log_path=tmp / "gunicorn.log").start()
    try:
        server.wait_listening(WAIT_S)
        server.held_lock = lock
        server.env_for_tests = env
        yield server
    finally:
        if lock.is_locked:
            lock.release()
        server.stop()


def test_not_ready_then_ready(generate):
    status, text = generate.readiness()
    assert status == 503 and text.startswith("downloading")
    r = chat(generate.url)
    assert r.status_code == 503
    assert r.headers["Retry-After"] == "4"
    assert r.json()["error"]["code"] == "model_not_ready"
    assert requests.get(f"{generate.url}/health/liveness", timeout=5).status_code == 200
    generate.held_lock.release()
    generate.wait_ready(180)
    metrics = requests.get(f"{generate.url}/metrics", timeout=5).text
    for phase in ("download", "verify", "load"):
        assert f'llmfn_cold_start_seconds{{phase="{phase}"}}' in metrics


def test_answer_not_streamed(generate):
    generate.wait_ready(180)
    body = chat(generate.url).json()
    assert body["choices"][0]["message"]["content"].startswith(ANSWER.expected)
    assert body["usage"]["completion_tokens"] <= 24


def test_answer_streamed_is_the_answer_not_streamed(generate):
    """Same request, same process: the same kernel path, so the whole text is identical."""
    generate.wait_ready(180)
    whole = chat(generate.url).json()["choices"][0]["message"]["content"]
    r = requests.post(f"{generate.url}/v1/chat/completions", stream=True, timeout=WAIT_S,
                      json={"messages": QUESTION, "max_tokens": 24, "temperature": 0,
                            "stream": True})
    assert r.headers["Content-Type"].startswith("text/event-stream")
    text, done = "", False
    for line in r.iter_lines():
        if line == b"data: [DONE]":
            done = True
        elif line.startswith(b"data: "):
            delta = json.loads(line[6:])["choices"][0]["delta"]
            text += delta.get("content") or ""
    assert done and text.startswith(ANSWER.expected) and text == whole


def test_openai_client_unchanged(generate):
    client = OpenAI(base_url=f"{generate.url}/v1", api_key="unused", max_retries=0)
    model = client.models.list().data[0].id
    assert model == "smollm2-135m-instruct-q4_1"
    resp = client.chat.completions.create(model=model, messages=QUESTION, max_tokens=24,
                                          temperature=0)
    assert resp.choices[0].message.content.startswith(ANSWER.expected)
    assert resp.usage.completion_tokens == resp.usage.total_tokens - resp.usage.prompt_tokens
    parts, usage = [], None
    for chunk in client.chat.completions.create(model=model, messages=QUESTION, max_tokens=24,
                                                temperature=0, stream=True,
                                                stream_options={"include_usage": True}):
        if chunk.choices:
            parts.append(chunk.choices[0].delta.content or "")
        if chunk.usage:
            usage = chunk.usage
    assert "".join(parts).startswith(ANSWER.expected) and usage.completion_tokens > 0
    comp = client.completions.create(model=model, prompt=SUN.prompt, max_tokens=5,
                                     temperature=0)
    assert comp.choices[0].text.startswith(SUN.expected)  # a real answer, clear on every path
    assert comp.usage.completion_tokens <= 5


def test_disconnect_stops_generation(generate, sink):
    """Close the socket after two chunks: the event shows the generation was cancelled."""
    generate.wait_ready(180)
    body = json.dumps({"messages": QUESTION, "max_tokens": 400, "stream": True,
                       "temperature": 1.0}).encode()
    sock = socket.create_connection(("127.0.0.1", generate.port), timeout=WAIT_S)
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: "
                 b"application/json\r\nContent-Length: " + str(len(body)).encode() +
                 b"\r\n\r\n" + body)
    seen = b""
    while seen.count(b"data: {") < 3:
        seen += sock.recv(65536)
    sock.close()
    rid = re.search(rb"X-Request-Id: ([0-9a-f]{32})", seen, re.I).group(1).decode()
    data = sink.event_data(rid)
    assert data["finish_reason"] == "cancelled" and data["status"] == 499
    # the write after the close fails within a token or two; then the loop stops at once
    assert data["completion_tokens"] < 40


def test_events_flag_the_cold_start_once(generate, sink):
    generate.wait_ready(180)
    last = chat(generate.url).headers["X-Request-Id"]
    sink.event_data(last)
    events = [e["data"] for e in sink.events()]
    served = [e for e in events if e["status"] == 200]
    assert served[0]["cold_start"] is True
    assert all(e["cold_start"] is False for e in served[1:])
    assert all(e["model"] == "smollm2-135m-instruct-q4_1" for e in events)
    assert all(e["function"] == "generate" for e in events)


def test_func_python_path_serves_the_same_answers(generate, tmp_path):
    """func's Python scaffolding: ``func_python.http.serve(new)`` on the same weights."""
    generate.wait_ready(180)
    expected = chat(generate.url).json()["choices"][0]["message"]["content"]
    env = {**generate.env_for_tests, "K_SINK": ""}
    server = procs.func_python_server("generate", procs.free_port(), env=env,
                                      log_path=tmp_path / "func.log").start()
    try:
        server.wait_ready(180)  # the cache is warm: no second download
        assert requests.get(f"{server.url}/health/liveness", timeout=5).status_code == 200
        # the model loaded on the preload thread while the web stack imported, and readiness
        # 200 means it is loaded: the first request gets an answer, not a 503
        assert "adopted the model load started early" in server.log_tail(20000)
        got = chat(server.url).json()["choices"][0]["message"]["content"]
        # same build, same settings, one request at a time: the same kernel path, same text
        assert got == expected and got.startswith(ANSWER.expected)
        models = requests.get(f"{server.url}/v1/models", timeout=5).json()
        assert models["data"][0]["id"] == "smollm2-135m-instruct-q4_1"
        stream = requests.post(f"{server.url}/v1/completions", timeout=WAIT_S, json={
            "prompt": CHINA.prompt, "max_tokens": 4, "temperature": 0, "stream": True}).text
        assert stream.endswith("data: [DONE]\n\n")
        chunks = [json.loads(line[6:]) for line in stream.splitlines()
                  if line.startswith("data: {")]
        text = "".join(c["choices"][0]["text"] for c in chunks if c["choices"])
        assert text.startswith(CHINA.expected)
    finally:
        assert server.stop() == 0
