"""The event-driven path end to end, with `make run`'s topology: producer -> local broker (the
Triggers of eventing/) -> generate / embed -> reply -> broker -> a consumer subscribed by a
Trigger; the inference events -> broker -> audit (real FerretDB); dead letters -> audit.

generate runs one slot and no queue, so a request event that arrives while the slot is busy gets
429 + Retry-After, and the broker's retry (the Trigger's delivery) makes it succeed.
"""
from __future__ import annotations

import datetime as dt
import queue
import threading
import time
import uuid

import pymongo
import pytest
import requests
from cloudevents.core.bindings.http import to_binary_event, to_structured_event
from cloudevents.core.v1.event import CloudEvent

from scripts import broker as local_broker
from scripts import procs, run
from tests.support.audit import audit_env, unique_db
from tests.support.calls import ANSWER
from tests.support.models import upload_function_models

READY_S = 180
WAIT_S = 90
CHAT = "dev.llmfn.chat.completion.requested.v1"
EMBED = "dev.llmfn.embeddings.requested.v1"
FAILING = "dev.llmfn.test.always.fails.v1"


class Consumer:
    """A Trigger's subscriber in this process: keeps every reply it is given."""
    __name__ = "test-consumer"

    def __init__(self):
        self.events: queue.Queue[local_broker.Event] = queue.Queue()

    def __call__(self, event) -> None:
        self.events.put(event)

    def reply_to(self, request_id: str, deadline_s: float = WAIT_S):
        end, seen = time.monotonic() + deadline_s, []
        while time.monotonic() < end:
            try:
                event = self.events.get(timeout=0.5)
            except queue.Empty:
                continue
            if event.get("causationid") == request_id:
                return event
            seen.append(event)
        raise AssertionError(f"no reply to {request_id}; saw {[e.attrs for e in seen]}")


def fails(event) -> None:
    raise RuntimeError("this subscriber always fails")


@pytest.fixture(scope="module")
def pipeline(minio, ferretdb, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pipeline")
    upload_function_models(minio)
    db = unique_db()
    ports = {name: procs.free_port() for name in ("audit", "generate", "embed")}
    services = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
    consumer = Consumer()
    triggers = local_broker.load_triggers(services) + [
        local_broker.Trigger("test-replies", consumer, filters=local_broker.REPLY_FILTERS),
        local_broker.Trigger("always-fails", fails, filters=[{"exact": {"type": FAILING}}],
                             delivery=local_broker.Delivery(
                                 retry=2, backoff_delay_s=0.05,
                                 dead_letter_sink=f"{services['audit']}/dead-letter"))]
    bus = local_broker.Broker(triggers, port=0).start()
    servers = {}
    try:
        servers["audit"] = procs.gunicorn_server(
            "audit", ports["audit"], env=audit_env(ferretdb.uri, db),
            log_path=tmp / "audit.log").start()
        for name in ("generate", "embed"):
            env = run.function_env(name, run.FUNCTIONS[name][2], minio, ferretdb, True, bus.url)
            env.update(MODEL_CACHE_DIR=str(tmp / "cache"), N_THREADS="1", RETRY_AFTER_S="1")
            if name == "generate":
                env.update(SLOTS="1", QUEUE_SIZE="0")
            servers[name] = procs.gunicorn_server(name, ports[name], env=env,
                                                  log_path=tmp / f"{name}.log").start()
        for server in servers.values():
            server.wait_ready(READY_S)
        yield {"bus": bus, "consumer": consumer, "db": db, "uri": ferretdb.uri, **servers}
    finally:
        for name in ("generate", "embed"):
            if name in servers:
                servers[name].stop()
        bus.stop(grace_s=30)
        if "audit" in servers:
            servers["audit"].stop()


def request_event(kind: str, data: dict, **attrs) -> CloudEvent:
    return CloudEvent({"type": kind, "source": "/test/pipeline", "id": uuid.uuid4().hex,
                       "time": dt.datetime.now(dt.UTC),
                       "datacontenttype": "application/json", **attrs}, data)


def publish(bus, event: CloudEvent, mode: str = "binary") -> None:
    msg = (to_structured_event if mode == "structured" else to_binary_event)(event)
    r = requests.post(bus.url, headers=dict(msg.headers), data=msg.body, timeout=30)
    assert r.status_code == 202, r.text


def inference_docs(p) -> list:
    with pymongo.MongoClient(p["uri"], serverSelectionTimeoutMS=5000) as client:
        return list(client[p["db"]].inference_events.find({}))


def wait_for(check, deadline_s: float = 30):
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        got = check()
        if got:
            return got
        time.sleep(0.2)
    return check()


def requests_to_root(server, status: str) -> float:
    text = requests.get(server.url + "/metrics", timeout=10).text
    for line in text.splitlines():
        if line.startswith(f'llmfn_requests_total{{route="/",status="{status}"}}'):
            return float(line.split()[-1])
    return 0.0


@pytest.mark.parametrize("mode", ["binary", "structured"])
def test_request_event_through_the_broker_replies_and_is_audited(pipeline, mode):
    event = request_event(CHAT, {"messages": ANSWER.messages, "max_tokens": 3,
                                 "temperature": 0})
    publish(pipeline["bus"], event, mode)
    reply = pipeline["consumer"].reply_to(event.get_id())
    assert reply.get("type") == "dev.llmfn.chat.completion.v1"
    assert reply.get("correlationid") == event.get_id()
    body = reply.data_for_humans()
    assert body["choices"][0]["message"]["content"] == ANSWER.expected
    rid = body["id"].removeprefix("chatcmpl-")
    docs = wait_for(lambda: [d for d in inference_docs(pipeline) if d["request_id"] == rid])
    assert len(docs) == 1 and docs[0]["function"] == "generate"
    kpis = requests.get(pipeline["audit"].url + "/kpis?function=generate", timeout=30).json()
    assert kpis["total"]["count"] >= 1


def test_embeddings_request_event_through_the_broker(pipeline):
    event = request_event(EMBED, {"input": ["scale to zero"]})
    publish(pipeline["bus"], event)
    reply = pipeline["consumer"].reply_to(event.get_id())
    assert reply.get("type") == "dev.llmfn.embeddings.v1"
    assert len(reply.data_for_humans()["data"][0]["embedding"]) == 384


def test_a_full_queue_is_retried_by_the_broker_and_succeeds(pipeline):
    """generate's one slot is busy with a stream: the event gets 429, then a retry succeeds."""
    gen = pipeline["generate"]
    before = requests_to_root(gen, "429")
    release = threading.Event()

    def hold_the_slot():
        with requests.post(gen.url + "/v1/completions", stream=True, timeout=WAIT_S,
                           json={"prompt": "Count: 1, 2, 3,", "max_tokens": 200,
                                 "temperature": 0, "stream": True}) as r:
            for _ in r.iter_lines():
                if release.is_set():
                    break

    holder = threading.Thread(target=hold_the_slot, daemon=True)
    holder.start()
    try:
        assert wait_for(lambda: "llmfn_slots_busy 1.0" in requests.get(
            gen.url + "/metrics", timeout=10).text, 30)
        event = request_event(CHAT, {"messages": ANSWER.messages, "max_tokens": 3,
                                     "temperature": 0})
        publish(pipeline["bus"], event)
        assert wait_for(lambda: requests_to_root(gen, "429") > before, 30)
    finally:
        release.set()
        holder.join(WAIT_S)
    reply = pipeline["consumer"].reply_to(event.get_id())
    assert reply.get("type") == "dev.llmfn.chat.completion.v1"


def test_a_request_that_can_never_succeed_is_not_retried(pipeline):
    gen = pipeline["generate"]
    before = requests_to_root(gen, "200")
    event = request_event(CHAT, {"messages": "not a list"})
    publish(pipeline["bus"], event)
    reply = pipeline["consumer"].reply_to(event.get_id())
    assert reply.get("type") == "dev.llmfn.request.failed.v1"
    assert reply.data_for_humans()["error"]["param"] == "messages"
    time.sleep(1.0)  # a retry, had there been one, would have come by now
    assert requests_to_root(gen, "200") == before + 1


def test_a_subscriber_that_keeps_failing_ends_in_audits_dead_letters(pipeline):
    event = request_event(FAILING, {"n": 1})
    publish(pipeline["bus"], event)

    def dead_letter():
        with pymongo.MongoClient(pipeline["uri"], serverSelectionTimeoutMS=5000) as client:
            return client[pipeline["db"]].dead_letters.find_one({"ce.id": event.get_id()})

    doc = wait_for(dead_letter, 30)
    assert doc is not None and doc["knativeerrorcode"] == "500"
    assert doc["knativeerrordest"].startswith("python:")
    assert "always fails" in doc["knativeerrordata_text"]
