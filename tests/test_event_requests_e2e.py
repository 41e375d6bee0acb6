"""Request events straight to real functions: a producer (the cloudevents SDK) asks generate
(SmolLM2-135M, two processes: gunicorn and func-python, two revisions) and embed (MiniLM) for
inferences and gets the answers back as reply events; audit (real FerretDB) counts each request
once, whichever process served each delivery.
"""
from __future__ import annotations

import datetime as dt
import time
import uuid

import numpy as np
import pymongo
import pytest
import requests
from cloudevents.core.bindings.http import (
    HTTPMessage,
    from_http_event,
    to_binary_event,
    to_structured_event,
)
from cloudevents.core.v1.event import CloudEvent

from scripts import (
    procs,
    run,  # scripts/run.py: the models and S3 keys of `make run`
)
from tests.support.audit import audit_env, unique_db
from tests.support.audit import start_gunicorn as start_audit
from tests.support.calls import ANSWER, embed
from tests.support.models import upload_function_models

READY_S = 180
EVENTS_S = 30
CHAT = "dev.llmfn.chat.completion.requested.v1"
EMBED = "dev.llmfn.embeddings.requested.v1"
# RequestReply's correlation value: <id>:<base64 of the encrypted id>:<replica>, opaque
OPAQUE = "6b1c2f0e-77aa-4f3b-9d3e-0c2a1f9e8d7c:bXlzZWNyZXQvK2VuY3J5cHRlZD0=:0"


@pytest.fixture(scope="module")
def stack(minio, ferretdb, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("event-requests")
    upload_function_models(minio)
    db = unique_db()
    audit = start_audit(tmp, audit_env(ferretdb.uri, db))
    servers = {}
    try:
        def env(name: str, revision: str) -> dict:
            e = run.function_env(name, run.FUNCTIONS[name][2], minio, ferretdb, True,
                                 f"{audit.url}/")
            return {**e, "MODEL_CACHE_DIR": str(tmp / "cache"), "N_THREADS": "1",
                    "K_SERVICE": name, "K_REVISION": revision, "API_KEYS": "only-for-http"}

        servers["gunicorn"] = procs.gunicorn_server(
            "generate", procs.free_port(), env=env("generate", "generate-00001"),
            log_path=tmp / "generate-gunicorn.log").start()
        servers["func"] = procs.func_python_server(
            "generate", procs.free_port(), env=env("generate", "generate-00002"),
            log_path=tmp / "generate-func.log").start()
        servers["embed"] = procs.gunicorn_server(
            "embed", procs.free_port(), env=env("embed", "embed-00001"),
            log_path=tmp / "embed.log").start()
        for server in servers.values():
            server.wait_ready(READY_S)
        yield {**servers, "audit": audit, "uri": ferretdb.uri, "db": db}
    finally:
        for server in servers.values():
            server.stop()
        audit.stop()


def request_event(kind: str, data: dict, **attrs) -> CloudEvent:
    return CloudEvent({"type": kind, "source": "/test/producer", "id": uuid.uuid4().hex,
                       "time": dt.datetime(2026, 5, 6, 7, 8, 9, tzinfo=dt.UTC),
                       "datacontenttype": "application/json", **attrs}, data)


def deliver(url: str, event: CloudEvent, mode: str = "binary") -> requests.Response:
    msg = (to_structured_event if mode == "structured" else to_binary_event)(event)
    return requests.post(url + "/", headers=dict(msg.headers), data=msg.body, timeout=120)


def reply_of(resp: requests.Response):
    assert resp.status_code == 200, resp.text
    return from_http_event(HTTPMessage(headers=dict(resp.headers), body=resp.content))


def chat_data(max_tokens: int = 3) -> dict:
    """ANSWER's question, greedy: its first 3 tokens lead by >= 6.15 logits on every kernel."""
    return {"messages": ANSWER.messages, "max_tokens": max_tokens, "temperature": 0}


@pytest.mark.parametrize("mode", ["binary", "structured"])
def test_chat_request_event_gets_a_chat_reply(stack, mode):
    event = request_event(CHAT, chat_data(), subject="ticket-42",
                          traceparent="00-" + "c" * 32 + "-" + "d" * 16 + "-01")
    reply = reply_of(deliver(stack["gunicorn"].url, event, mode))
    assert reply.get_type() == "dev.llmfn.chat.completion.v1"
    assert reply.get_source() == "/llmfn/generate/generate"
    assert reply.get_extension("causationid") == event.get_id()
    assert reply.get_extension("correlationid") == event.get_id()
    assert reply.get_subject() == "ticket-42"
    assert reply.get_extension("traceparent") == event.get_extension("traceparent")
    body = reply.get_data()
    assert body["object"] == "chat.completion" and body["usage"]["completion_tokens"] == 3
    assert body["choices"][0]["message"]["content"] == ANSWER.expected
    assert body["created"] == int(event.get_time().timestamp())


@pytest.mark.parametrize("mode", ["binary", "structured"])
def test_embeddings_reply_matches_the_http_answer(stack, mode):
    texts = ["Knative scales to zero.", "The capital of France is Paris."]
    reply = reply_of(deliver(stack["embed"].url, request_event(EMBED, {"input": texts}), mode))
    assert reply.get_type() == "dev.llmfn.embeddings.v1"
    http = embed(stack["embed"].url, input=texts)
    assert http.status_code == 401  # API_KEYS guards the HTTP API, not the event path
    http = requests.post(stack["embed"].url + "/v1/embeddings", json={"input": texts},
                         headers={"Authorization": "Bearer only-for-http"}, timeout=60)
    want = [d["embedding"] for d in http.json()["data"]]
    got = [d["embedding"] for d in reply.get_data()["data"]]
    assert np.allclose(got, want, atol=1e-5)
    assert reply.get_data()["usage"] == http.json()["usage"]


def test_a_redelivery_to_another_process_is_the_same_request_and_counted_once(stack):
    """Two processes of two revisions (gunicorn, func-python) serve the same request event."""
    event = request_event(CHAT, chat_data(), correlationid=OPAQUE)
    first = deliver(stack["gunicorn"].url, event)
    again = deliver(stack["func"].url, event, "structured")
    a, b = reply_of(first), reply_of(again)
    assert (a.get_id(), a.get_source()) == (b.get_id(), b.get_source())
    # the same answer, ids and usage; only cached_tokens tells which pod had the prefix cached
    da, db = a.get_data(), b.get_data()
    cached = [d["usage"]["prompt_tokens_details"].pop("cached_tokens") for d in (da, db)]
    assert da == db
    assert all(0 <= c < da["usage"]["prompt_tokens"] for c in cached)
    assert a.get_extension("replyid") == OPAQUE == b.get_extension("replyid")
    # audit: one document for the request although both processes emitted its event
    rid = a.get_data()["id"].removeprefix("chatcmpl-")
    end = time.monotonic() + EVENTS_S
    with pymongo.MongoClient(stack["uri"], serverSelectionTimeoutMS=5000) as client:
        events = client[stack["db"]].inference_events
        while events.count_documents({"request_id": rid}) == 0 and time.monotonic() < end:
            time.sleep(0.2)
        time.sleep(1.0)  # the second delivery's event, had it been counted, is in by now
        docs = list(events.find({"request_id": rid}))
    assert len(docs) == 1 and docs[0]["ce"]["source"] == "/llmfn/generate/generate"
    dup = requests.get(stack["audit"].url + "/metrics", timeout=10).text
    assert "audit_events_duplicate_total" in dup


def test_a_request_that_can_never_succeed_gets_a_failed_reply(stack):
    event = request_event(CHAT, {"messages": ANSWER.messages, "max_tokens": "many"})
    resp = deliver(stack["gunicorn"].url, event)
    reply = reply_of(resp)  # 200: the producer learns it, the Broker does not retry
    assert reply.get_type() == "dev.llmfn.request.failed.v1"
    error = reply.get_data()["error"]
    assert error["param"] == "max_tokens" and error["type"] == "invalid_request_error"
    too_long = request_event(CHAT, {"messages": [{"role": "user", "content": "word " * 9000}]})
    reply = reply_of(deliver(stack["gunicorn"].url, too_long))
    assert reply.get_type() == "dev.llmfn.request.failed.v1"
    assert reply.get_data()["error"]["code"] == "context_length_exceeded"
    wrong = reply_of(deliver(stack["embed"].url, request_event(CHAT, chat_data())))
    assert wrong.get_data()["error"]["code"] == "unknown_event_type"
