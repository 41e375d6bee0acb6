"""The func-python contract of ``function.new()``: start returns at once, probes, handle, stop."""
from __future__ import annotations

import asyncio
import json
import logging

from function import new

WAIT_S = 30


def asgi_request(instance, method: str, path: str, body: dict | None = None):
    """One request through ``instance.handle`` as func-python would make it."""
    raw = json.dumps(body).encode() if body is not None else b""
    out = {"status": None, "body": b"", "headers": {}}

    async def main():
        sent = False

        async def receive():
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": raw, "more_body": False}
            await asyncio.sleep(WAIT_S)
            return {"type": "http.disconnect"}

        async def send(msg):
            if msg["type"] == "http.response.start":
                out["status"] = msg["status"]
                out["headers"] = {k.decode().lower(): v.decode() for k, v in msg["headers"]}
            elif msg["type"] == "http.response.body":
                out["body"] += msg.get("body", b"")

        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
                 "method": method, "scheme": "http", "path": path, "raw_path": path.encode(),
                 "query_string": b"", "root_path": "",
                 "headers": [(b"content-type", b"application/json"),
                             (b"content-length", str(len(raw)).encode())],
                 "client": ("127.0.0.1", 5000), "server": ("127.0.0.1", 8080)}
        await asyncio.wait_for(instance.handle(scope, receive, send), WAIT_S)

    asyncio.run(main())
    return out


def test_lifecycle(tiny_model, tmp_path):
    instance = new()
    assert instance.ready() == (False, "not started")
    assert instance.alive()[0]
    instance.start({"MODEL_URI": f"file://{tiny_model}", "N_CTX": "256",
                    "MODEL_CACHE_DIR": str(tmp_path)})
    assert instance.runtime.host.wait(WAIT_S)
    # SLOTS unset: derived from the model and the memory (the machine's here: the cap)
    ok, text = instance.ready()
    assert ok and text.startswith("ready: SLOTS 4 (derived), N_THREADS "), text
    assert " x KV 0.1 MiB (256 tokens) + runtime 160 MiB = " in text
    assert instance.runtime.capacity == 4
    r = asgi_request(instance, "POST", "/v1/completions", {"prompt": "hi", "max_tokens": 2})
    assert r["status"] == 200
    assert json.loads(r["body"])["usage"]["completion_tokens"] == 2
    r = asgi_request(instance, "POST", "/v1/completions", {"prompt": 5})
    assert r["status"] == 400 and json.loads(r["body"])["error"]["param"] == "prompt"
    instance.stop()
    assert instance.ready() == (False, "stopping")
    r = asgi_request(instance, "POST", "/v1/completions", {"prompt": "hi", "max_tokens": 2})
    assert r["status"] == 503


def test_bad_config_fails_start_clearly(tmp_path):
    """A setting it cannot use: the process stays up and every answer names it (503)."""
    instance = new()
    instance.start({"MODEL_URI": "s3://b/k", "N_CTX": "many"})
    for probe in (instance.ready, instance.alive):
        ok, reason = probe()
        assert not ok and "N_CTX must be int" in reason, reason
    r = asgi_request(instance, "POST", "/v1/completions", {"prompt": "hi", "max_tokens": 2})
    assert r["status"] == 503, r
    err = json.loads(r["body"])["error"]
    assert err["code"] == "invalid_settings" and "N_CTX must be int" in err["message"]
    instance.stop()


def test_explicit_slots_and_threads_win(tiny_model, tmp_path, caplog):
    """SLOTS and N_THREADS set: the engine, the scheduler, readiness and the start-up log use
    them."""
    caplog.set_level(logging.INFO, logger="function.engine")
    instance = new()
    instance.start({"MODEL_URI": f"file://{tiny_model}", "N_CTX": "256", "SLOTS": "2",
                    "N_THREADS": "1", "MODEL_CACHE_DIR": str(tmp_path)})
    try:
        assert instance.runtime.host.wait(WAIT_S)
        ok, text = instance.ready()
        assert ok and text.startswith("ready: SLOTS 2 (SLOTS), N_THREADS 1 (N_THREADS): "), text
        engine = instance.runtime.host.model
        assert (engine.slots, engine.context.params.n_threads) == (2, 1)
        assert engine.context.params.n_ctx == 2 * 256
        assert instance.runtime.capacity == 2
        (line,) = [r.getMessage() for r in caplog.records if r.name == "function.engine"]
        assert line == "sizing: " + text.removeprefix("ready: ")
        r = asgi_request(instance, "POST", "/v1/completions",
                         {"prompt": "hi", "max_tokens": 1, "n": 3})
        assert r["status"] == 400 and json.loads(r["body"])["error"]["param"] == "n"
    finally:
        instance.stop()
