"""locust users for the three functions (run by load/run_load.py; docs/load.md).

- ``GenerateUser``: SSE chat streams (time to first token, tokens/s, must end with [DONE]) and
  non-streamed completions against generate;
- ``EmbedUser``: ``/v1/embeddings`` with 1-4 inputs;
- ``AuditUser``: binary-mode ``dev.llmfn.inference.completed.v1`` CloudEvents POSTed to audit.

Every user honours ``Retry-After``: a 429 or 503 that carries it is a deliberate answer, reported
under "<name> [retry-after]" as a success, and the request is sent again after the given
seconds (at most MAX_ATTEMPTS times). Anything else that is not the expected answer, a
connection error included, is a failure. Each logical request is also appended to the JSONL file
``LLMFN_LOAD_RECORDS`` (outcome, attempts, latency, TTFT, tokens/s) for the runner.

Configuration (environment): LLMFN_GENERATE_URL, LLMFN_EMBED_URL, LLMFN_AUDIT_URL (a user
class whose URL is empty is left out), LLMFN_LOAD_PROFILE (a name of load/profiles.py),
LLMFN_LOAD_RECORDS, LLMFN_MAX_TOKENS (default 32).
"""
from __future__ import annotations

import datetime as dt
import json
import os
import random
import time
import uuid

import requests
from locust import User, between, events, task

from load import profiles

MAX_ATTEMPTS = 10
RETRY_AFTER_CAP_S = 10.0
TIMEOUT_S = 120.0
MAX_TOKENS = int(os.environ.get("LLMFN_MAX_TOKENS", "32"))
URLS = {name: os.environ.get(f"LLMFN_{name.upper()}_URL", "").rstrip("/")
        for name in ("generate", "embed", "audit")}
RECORDS = os.environ.get("LLMFN_LOAD_RECORDS", "")
PROMPTS = ["What is the capital of France?", "Name three primary colours.",
           "Write a haiku about the sea.", "Explain what a CPU does in one sentence.",
           "Give me a synonym for fast.", "What is 12 times 12?",
           "Describe a cat in five words.", "Why is the sky blue?"]
SENTENCES = ["The quick brown fox jumps over the lazy dog.", "Knative scales to zero.",
             "Embeddings map text to vectors.", "A load test measures latency under load.",
             "Serverless functions start on demand.", "The weather is nice today."]

# One shape class at module level (locust takes the module's LoadTestShape subclass).
Shape = profiles.shape_for(os.environ.get("LLMFN_LOAD_PROFILE", "smoke"))

_records: list[dict] = []


@events.quitting.add_listener
def _write_records(environment, **_kw):
    if RECORDS:
        with open(RECORDS, "a") as f:
            for rec in _records:
                f.write(json.dumps(rec) + "\n")


class Unexpected(Exception):
    """The answer was not the expected one (status, shape, or an unfinished stream)."""


class _Base(User):
    abstract = True
    function = ""

    def on_start(self):
        self.session = requests.Session()
        self.url = URLS[self.function]

    def on_stop(self):
        self.session.close()

    def fire(self, name: str, t0: float, *, length: int = 0, exc: Exception | None = None,
             kind: str = "HTTP", response_time_ms: float | None = None) -> None:
        ms = (time.perf_counter() - t0) * 1000 if response_time_ms is None else response_time_ms
        self.environment.events.request.fire(request_type=kind, name=name, response_time=ms,
                                             response_length=length, exception=exc,
                                             context={})

    def logical(self, name: str, send) -> None:
        """Run ``send()`` (returns (response, extra-metrics dict)) with Retry-After honoured,
        fire locust events and record the logical request's outcome."""
        t_start = time.time()
        rejected = 0
        for attempt in range(1, MAX_ATTEMPTS + 1):
            t0 = time.perf_counter()
            try:
                resp, extra = send()
            except (requests.RequestException, Unexpected, ValueError, KeyError) as err:
                self.fire(name, t0, exc=err)
                self.record(name, t_start, "failed", attempt, rejected, t0,
                            error=f"{type(err).__name__}: {str(err)[:200]}")
                return
            retry_after = resp.headers.get("Retry-After")
            if resp.status_code in (429, 503) and retry_after is not None:
                self.fire(f"{name} [retry-after {resp.status_code}]", t0, length=len(resp.content))
                rejected += 1
                time.sleep(min(float(retry_after), RETRY_AFTER_CAP_S))
                continue
            self.fire(name, t0, length=extra.pop("length", 0))
            if "ttft_ms" in extra:
                self.fire(name, t0, kind="TTFT", response_time_ms=extra["ttft_ms"])
            self.record(name, t_start, "ok", attempt, rejected, t0, **extra)
            return
        err = Unexpected(f"still rejected after {MAX_ATTEMPTS} attempts")
        self.fire(name, time.perf_counter(), exc=err, response_time_ms=0)
        self.record(name, t_start, "failed", MAX_ATTEMPTS, rejected, time.perf_counter(),
                    error=str(err))

    def record(self, name, t_start, outcome, attempts, rejected, t0, **extra) -> None:
        _records.append({"name": name, "t": t_start, "outcome": outcome, "attempts": attempts,
                         "retry_after": rejected, "ms": (time.perf_counter() - t0) * 1000,
                         **extra})

    def post(self, path: str, **kw) -> requests.Response:
        return self.session.post(self.url + path, timeout=TIMEOUT_S, **kw)


def _expect(resp: requests.Response, ok=(200,)) -> None:
    """Raise :class:`Unexpected` unless the status is in ``ok`` or a Retry-After answer."""
    if resp.status_code not in ok and not (resp.status_code in (429, 503)
                                           and "Retry-After" in resp.headers):
        raise Unexpected(f"HTTP {resp.status_code}: {resp.text[:200]}")


class GenerateUser(_Base):
    """SSE chat streams (3 of 4) and non-streamed completions against generate."""
    function = "generate"
    weight = 3
    wait_time = between(0.5, 1.5)

    @task(3)
    def chat_stream(self):
        def send():
            body = {"messages": [{"role": "user", "content": random.choice(PROMPTS)}],
                    "max_tokens": MAX_TOKENS, "temperature": 0.7, "stream": True,
                    "stream_options": {"include_usage": True}}
            t0 = time.perf_counter()
            resp = self.post("/v1/chat/completions", json=body, stream=True)
            _expect(resp)
            if resp.status_code != 200:
                resp.content  # noqa: B018  (read the error body)
                return resp, {}
            first = last = None
            tokens, done, length = 0, False, 0
            with resp:
                for line in resp.iter_lines():
                    length += len(line)
                    if not line.startswith(b"data: "):
                        continue  # ": keep-alive" comments, blank lines
                    if line == b"data: [DONE]":
                        done = True
                        break
                    chunk = json.loads(line[6:])
                    if chunk.get("usage"):
                        tokens = chunk["usage"]["completion_tokens"]
                    if any(c.get("delta", {}).get("content") for c in chunk.get("choices", [])):
                        last = time.perf_counter()
                        first = first or last
            if not done:
                raise Unexpected("the stream ended without data: [DONE]")
            extra = {"length": length, "tokens": tokens}
            if first is not None:
                extra["ttft_ms"] = (first - t0) * 1000
                if tokens > 1 and last > first:
                    extra["tokens_per_s"] = (tokens - 1) / (last - first)
            return resp, extra

        self.logical("generate: chat stream", send)

    @task(1)
    def completion(self):
        def send():
            resp = self.post("/v1/completions", json={"prompt": random.choice(PROMPTS),
                                                      "max_tokens": MAX_TOKENS // 2,
                                                      "temperature": 0.7})
            _expect(resp)
            if resp.status_code == 200 and not resp.json()["choices"]:
                raise Unexpected("no choices")
            return resp, {"length": len(resp.content)}

        self.logical("generate: completion", send)


class EmbedUser(_Base):
    """Embeddings of 1-4 sentences."""
    function = "embed"
    weight = 2
    wait_time = between(0.2, 1.0)

    @task
    def embeddings(self):
        def send():
            inputs = random.sample(SENTENCES, random.randint(1, 4))
            resp = self.post("/v1/embeddings", json={"input": inputs})
            _expect(resp)
            if resp.status_code == 200 and len(resp.json()["data"]) != len(inputs):
                raise Unexpected("wrong number of vectors")
            return resp, {"length": len(resp.content)}

        self.logical("embed: embeddings", send)


class AuditUser(_Base):
    """Inference CloudEvents (binary mode) as generate and embed send them."""
    function = "audit"
    weight = 1
    wait_time = between(0.2, 0.8)

    @task
    def event(self):
        def send():
            now = dt.datetime.now(dt.UTC)
            data = {"request_id": f"load-{uuid.uuid4().hex}", "function": "generate",
                    "model": "load-test", "model_sha256": "ab" * 32, "service": "load",
                    "revision": "load-00001", "endpoint": "/v1/chat/completions",
                    "status": 200, "error_code": None, "prompt_tokens": 12,
                    "completion_tokens": 20, "input_count": 1, "ttft_s": 0.05,
                    "duration_s": 0.5, "tokens_per_s": 40.0, "finish_reason": "stop",
                    "cold_start": False, "stream": True, "time": now.isoformat()}
            headers = {"ce-specversion": "1.0", "ce-id": uuid.uuid4().hex,
                       "ce-source": "/llmfn/load", "ce-type": "dev.llmfn.inference.completed.v1",
                       "ce-time": now.isoformat(), "Content-Type": "application/json"}
            resp = self.post("/", data=json.dumps(data), headers=headers)
            _expect(resp, ok=range(200, 300))
            return resp, {"length": len(resp.content)}

        self.logical("audit: event", send)


# Users whose function has no URL are left out (e.g. a stack without audit).
for _cls in (GenerateUser, EmbedUser, AuditUser):
    if not URLS[_cls.function]:
        _cls.abstract = True
del _cls  # locust takes every module-level User class: no second name for one
