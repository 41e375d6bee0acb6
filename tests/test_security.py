"""Security on real processes (gunicorn, as the container runs the functions).

- No API key, S3 secret or MongoDB password appears in any log line, response body or
  inference event: with keys set, and with failures forced (wrong and missing keys, an S3
  secret that is refused, a missing object, a database that is down).
- API_KEYS_FILE is re-read when the mounted secret changes (kubelet's symlink swap), with no
  restart.
- Who is calling: the inference event carries the key id (a sha256 prefix), never the key;
  MAX_CONCURRENT_PER_KEY keeps one key from taking every slot: one more gets 429 with
  Retry-After, other keys are served.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import time
import uuid

import pytest
import requests

from scripts import procs
from tests.support.audit import audit_env, encode, make_event, unique_db
from tests.support.eventsink import running_receiver
from tests.support.models import model_file

DEADLINE_S = 120.0
API_KEY = "sk-llmfn-" + uuid.uuid4().hex  # unique: found only where it leaked
OTHER_KEY = "sk-other-" + uuid.uuid4().hex
MONGO_PASSWORD = "pw-" + uuid.uuid4().hex


def key_id(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:12]


@pytest.fixture(scope="module")
def tiny_model():
    return model_file("tiny-llama.gguf", "make_tiny_model.py")


def _server(function: str, tmp_path, env: dict, name: str) -> procs.ServerProcess:
    return procs.gunicorn_server(function, procs.free_port(), log_path=tmp_path / f"{name}.log",
                                 name=name, env={"N_THREADS": "1", "N_CTX": "256",
                                                 "OMP_WAIT_POLICY": "passive",
                                                 "GUNICORN_THREADS": "8", **env}).start()


def _wait_failing(server: procs.ServerProcess, path: str) -> str:
    """Poll ``path`` until it fails (500 from func-python, 503 from llmfn's app); its body."""
    end = time.monotonic() + DEADLINE_S
    while True:
        got, body = procs.http_status(server.host, server.port, path)
        if got in (500, 503):
            return body
        assert server.running and time.monotonic() < end, server.log_tail()
        time.sleep(0.1)


def _assert_secret_free(texts: list[str], secrets: list[str]) -> None:
    for secret in secrets:
        assert secret, "an empty secret proves nothing"
        leaks = [t[max(0, t.find(secret) - 200):t.find(secret) + 200] for t in texts
                 if secret in t]
        assert not leaks, f"secret leaked: {leaks[:2]}"


def test_no_key_or_secret_in_logs_bodies_or_events(tmp_path, tiny_model, minio):
    texts: list[str] = []
    s3 = minio.client()
    bucket = f"sec-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=bucket)
    s3.upload_file(str(tiny_model), bucket, "tiny.gguf")
    s3_env = minio.client_env()
    servers = []
    with running_receiver() as sink:
        try:
            ok = _server("generate", tmp_path, {
                **s3_env, "MODEL_URI": f"s3://{bucket}/tiny.gguf", "API_KEYS": API_KEY,
                "K_SINK": sink.url, "MODEL_CACHE_DIR": str(tmp_path / "c1"),
                "EVENTS_INCLUDE_TEXT": "true"}, "generate-ok")
            denied = _server("generate", tmp_path, {
                **s3_env, "AWS_SECRET_ACCESS_KEY": s3_env["AWS_SECRET_ACCESS_KEY"] + "-wrong",
                "MODEL_URI": f"s3://{bucket}/tiny.gguf", "API_KEYS": API_KEY,
                "S3_MAX_ATTEMPTS": "1", "MODEL_CACHE_DIR": str(tmp_path / "c2")}, "s3-denied")
            missing = _server("embed", tmp_path, {
                **s3_env, "MODEL_URI": f"s3://{bucket}/missing.gguf", "API_KEYS": API_KEY,
                "S3_MAX_ATTEMPTS": "1", "MODEL_CACHE_DIR": str(tmp_path / "c3")}, "s3-missing")
            mongo_uri = (f"mongodb://llmfn:{MONGO_PASSWORD}@127.0.0.1:{procs.free_port()}/"
                         "?authSource=admin")
            audit = procs.gunicorn_server(
                "audit", procs.free_port(), log_path=tmp_path / "audit.log", name="audit",
                env={**audit_env(mongo_uri, unique_db()), "MONGODB_TIMEOUT_MS": "300",
                     "API_KEYS": API_KEY, "GUNICORN_THREADS": "8"}).start()
            servers = [ok, denied, missing, audit]
            ok.wait_ready(DEADLINE_S)
            auth = {"Authorization": f"Bearer {API_KEY}"}
            chat = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
            for headers in ({}, {"Authorization": f"Bearer {API_KEY}x"},
                            {"Authorization": f"Bearer {API_KEY[:-1]}"},
                            {"Authorization": f"Basic {API_KEY}"}):
                r = requests.post(f"{ok.url}/v1/chat/completions", json=chat, headers=headers,
                                  timeout=30)
                assert r.status_code == 401
                texts.append(r.text + json.dumps(dict(r.headers)))
            r = requests.post(f"{ok.url}/v1/chat/completions", json=chat, headers=auth,
                              timeout=60)
            assert r.status_code == 200
            texts.append(r.text)
            r = requests.post(f"{ok.url}/v1/chat/completions", json={**chat, "bad": 1},
                              headers=auth, timeout=60)
            assert r.status_code == 400
            texts.append(r.text)

            for server, why in ((denied, "access denied"), (missing, "not found")):
                body = _wait_failing(server, "/health/liveness")
                assert why in body, body
                texts.append(body)
                texts.append(procs.http_status(server.host, server.port,
                                               "/health/readiness")[1])
                r = requests.post(f"{server.url}/v1/embeddings" if server is missing
                                  else f"{server.url}/v1/completions",
                                  json={"input": "x"} if server is missing else {"prompt": "x"},
                                  headers=auth, timeout=30)
                assert r.status_code == 503
                texts.append(r.text)

            audit.wait_listening(DEADLINE_S)
            headers, data = encode(make_event(1, dt.datetime.now(dt.UTC)), "binary")
            r = requests.post(f"{audit.url}/", headers=headers, data=data, timeout=30)
            assert r.status_code == 503, r.text  # the database is down: retried later
            texts.append(r.text)
            for path in ("/kpis", "/health/readiness", "/health/liveness", "/metrics"):
                r = requests.get(f"{audit.url}{path}", headers=auth, timeout=30)
                texts.append(r.text)
            assert ok.running and audit.running
            texts += [json.dumps(e) for e in sink.events()]
            assert sink.events(), "no inference event"
        finally:
            for s in servers:
                s.stop()
    texts += [s.log_tail(2_000_000) for s in servers]
    assert any("access denied" in t for t in texts) and any("Traceback" in t for t in texts)
    _assert_secret_free(texts, [API_KEY, s3_env["AWS_SECRET_ACCESS_KEY"], MONGO_PASSWORD])


def test_api_keys_file_is_reread_when_the_secret_changes(tmp_path, tiny_model):
    """A Kubernetes secret volume: API_KEYS -> ..data/API_KEYS, ..data -> a timestamped
    directory, swapped atomically on rotation. The process is the same before and after."""
    secret = tmp_path / "secret"
    for version, key in (("v1", API_KEY), ("v2", OTHER_KEY)):
        (secret / version).mkdir(parents=True)
        (secret / version / "API_KEYS").write_text(key + "\n")
    (secret / "..data").symlink_to("v1")
    (secret / "API_KEYS").symlink_to("..data/API_KEYS")
    server = _server("generate", tmp_path, {"MODEL_URI": f"file://{tiny_model}",
                                            "API_KEYS_FILE": str(secret / "API_KEYS"),
                                            "MODEL_CACHE_DIR": str(tmp_path / "c")}, "rotate")
    try:
        server.wait_ready(DEADLINE_S)
        pids = server.pids()

        def status(key: str) -> int:
            return requests.get(f"{server.url}/v1/models", timeout=30,
                                headers={"Authorization": f"Bearer {key}"}).status_code

        assert (status(API_KEY), status(OTHER_KEY)) == (200, 401)
        (secret / "..data_tmp").symlink_to("v2")
        os.replace(secret / "..data_tmp", secret / "..data")
        end = time.monotonic() + 30
        while status(OTHER_KEY) != 200:
            assert time.monotonic() < end, server.log_tail()
            time.sleep(0.1)
        assert status(API_KEY) == 401
        assert server.pids() == pids  # no restart, same worker
        log = server.log_tail()
        assert "API_KEYS_FILE changed" in log and key_id(OTHER_KEY) in log
        assert API_KEY not in log and OTHER_KEY not in log
    finally:
        server.stop()


def test_key_id_in_events_and_per_key_concurrency_limit(tmp_path, tiny_model):
    with running_receiver() as sink:
        server = _server("generate", tmp_path, {
            "MODEL_URI": f"file://{tiny_model}", "API_KEYS": f"{API_KEY},{OTHER_KEY}",
            "MAX_CONCURRENT_PER_KEY": "1", "RETRY_AFTER_S": "3", "K_SINK": sink.url,
            "MODEL_CACHE_DIR": str(tmp_path / "c")}, "limit")
        try:
            server.wait_ready(DEADLINE_S)
            url = f"{server.url}/v1/completions"
            mine = {"Authorization": f"Bearer {API_KEY}"}
            other = {"Authorization": f"Bearer {OTHER_KEY}"}
            stream = requests.post(url, headers=mine, stream=True, timeout=60,
                                   json={"prompt": "x", "max_tokens": 200, "stream": True})
            lines = stream.iter_lines()
            assert next(line for line in lines if line.startswith(b"data: "))  # running
            over = requests.post(url, headers=mine, json={"prompt": "x", "max_tokens": 2},
                                 timeout=60)
            assert over.status_code == 429 and over.headers["Retry-After"] == "3"
            assert over.json()["error"]["code"] == "concurrency_limit_exceeded"
            served = requests.post(url, headers=other, json={"prompt": "x", "max_tokens": 2},
                                   timeout=60)
            assert served.status_code == 200  # another key keeps its share
            rest = [line for line in lines if line]
            assert rest[-1] == b"data: [DONE]"
            stream.close()
            end = time.monotonic() + 30
            while True:  # the slot of the key is freed when the stream's response closes
                again = requests.post(url, headers=mine, json={"prompt": "x", "max_tokens": 2},
                                      timeout=60)
                if again.status_code == 200 or time.monotonic() > end:
                    break
                time.sleep(0.1)
            assert again.status_code == 200, again.text
            ids = {r.headers["X-Request-Id"]: k for r, k in
                   ((stream, API_KEY), (served, OTHER_KEY), (again, API_KEY))}
            for rid, key in ids.items():
                assert sink.event_data(rid)["key_id"] == key_id(key)
            events = json.dumps(sink.events())
            assert API_KEY not in events and OTHER_KEY not in events
        finally:
            server.stop()
