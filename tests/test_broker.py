"""scripts/broker.py, the local stand-in for Knative's Broker: Trigger parsing (the repo's own
eventing/*.yaml included), filters, and the data plane against real HTTP servers on loopback
with the cloudevents SDK as producer: 202 ingress, retries and backoff, Retry-After, timeouts,
dead letters with the knativeerror* extensions, replies back into the broker, the TTL loop
guard, and a full queue answering 503 without losing or duplicating anything."""
from __future__ import annotations

import base64
import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests
import yaml
from cloudevents.core.bindings.http import to_binary_event, to_structured_event
from cloudevents.core.v1.event import CloudEvent

from scripts import broker as B  # scripts/broker.py

WAIT_S = 15.0  # upper bound of every wait; never a timing assertion
FAST = dict(backoff_delay_s=0.01)


class Sink:
    """A subscriber on 127.0.0.1 that records every POST and answers with ``respond(record)``
    -> (status, headers, body); records carry the arrival time and the decoded event."""

    def __init__(self, respond=None):
        self.respond = respond or (lambda rec: (202, {}, b""))
        self.records: list[dict] = []
        self.cond = threading.Condition()
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                headers = {k.lower(): v for k, v in self.headers.items()}
                rec = {"t": time.monotonic(), "headers": headers, "body": body,
                       "event": B.Event.from_http(headers, body), "path": self.path}
                with sink.cond:
                    rec["n"] = len(sink.records)
                    sink.records.append(rec)
                    sink.cond.notify_all()
                status, extra, out = sink.respond(rec)
                try:
                    self.send_response(status)
                    for k, v in extra.items():
                        self.send_header(k, v)
                    self.send_header("Content-Length", str(len(out)))
                    self.end_headers()
                    self.wfile.write(out)
                except OSError:  # the broker gave up on this attempt (timeout)
                    pass

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"

    def wait(self, n: int) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: len(self.records) >= n, WAIT_S)

    def ids(self) -> list[str]:
        with self.cond:
            return [r["event"].get("id") for r in self.records]


@pytest.fixture
def sinks():
    """make(respond=None) -> a started Sink; all shut down after the test."""
    started = []

    def make(respond=None) -> Sink:
        s = Sink(respond)
        threading.Thread(target=s.server.serve_forever, args=(0.05,), daemon=True).start()
        started.append(s)
        return s

    yield make
    for s in started:
        s.server.shutdown()
        s.server.server_close()


@pytest.fixture
def run_broker():
    """run_broker(triggers, **kw) -> a started Broker on a free port; stopped after the test."""
    started = []

    def make(triggers, **kw) -> B.Broker:
        b = B.Broker(triggers, port=0, **kw).start()
        started.append(b)
        return b

    yield make
    for b in started:
        b.stop(grace_s=5)


def ce(type_: str, data=None, id_: str | None = None, **ext) -> CloudEvent:
    return CloudEvent({"type": type_, "source": "/tests/broker", "id": id_ or uuid.uuid4().hex,
                       "datacontenttype": "application/json", **ext},
                      {"n": 1} if data is None else data)


def send(url: str, event: CloudEvent, structured: bool = False) -> requests.Response:
    msg = to_structured_event(event) if structured else to_binary_event(event)
    return requests.post(url, data=msg.body, headers=dict(msg.headers), timeout=10)


def reply_with(type_: str, structured: bool = False):
    """A respond() that answers 200 with a reply event (binary or structured mode)."""
    def respond(rec):
        reply = CloudEvent({"type": type_, "source": "/tests/replier",
                            "id": f"r-{rec['event'].get('id')}",
                            "datacontenttype": "application/json"}, {"reply_to": rec["n"]})
        msg = to_structured_event(reply) if structured else to_binary_event(reply)
        return 200, dict(msg.headers), msg.body
    return respond


def script(*answers):
    """A respond() that plays ``answers`` (status or (status, headers, body)), then 200."""
    queue = list(answers)
    lock = threading.Lock()

    def respond(rec):
        with lock:
            a = queue.pop(0) if queue else 200
        return a if isinstance(a, tuple) else (a, {}, b"")
    return respond


# -- parsing and filters -------------------------------------------------------------------------
def event(**attrs) -> B.Event:
    return B.Event({"specversion": "1.0", "id": "1", "source": "/s", **attrs})


@pytest.mark.parametrize("filters, type_, expect", [
    ([{"exact": {"type": "a.b"}}], "a.b", True),
    ([{"exact": {"type": "a.b"}}], "a.bc", False),
    ([{"prefix": {"type": "dev.llmfn.inference."}}], "dev.llmfn.inference.completed.v1", True),
    ([{"prefix": {"type": "dev.llmfn.inference."}}], "dev.llmfn.chat.completion.v1", False),
    ([{"suffix": {"type": ".v1"}}], "x.v1", True),
    ([{"any": [{"exact": {"type": "a"}}, {"exact": {"type": "b"}}]}], "b", True),
    ([{"any": [{"exact": {"type": "a"}}, {"exact": {"type": "b"}}]}], "c", False),
    ([{"all": [{"prefix": {"type": "a"}}, {"suffix": {"type": "z"}}]}], "a-z", True),
    ([{"all": [{"prefix": {"type": "a"}}, {"suffix": {"type": "z"}}]}], "a-y", False),
    ([{"not": {"exact": {"type": "a"}}}], "a", False),
    ([{"not": {"exact": {"type": "a"}}}], "b", True),
    ([{"prefix": {"type": "a"}}, {"not": {"suffix": {"type": ".requested.v1"}}}],
     "a.requested.v1", False),  # a list of filters: all must match
    ([{"exact": {"subject": "x"}}], "a", False),  # an absent attribute matches nothing
    ([], "anything", True),
])
def test_filters(filters, type_, expect):
    assert B.Trigger("t", "http://x/", filters=filters).matches(event(type=type_)) is expect


def test_legacy_attribute_filter_and_invalid_filters():
    t = B.Trigger("t", "http://x/", attributes={"type": "a", "source": "/s", "subject": ""})
    assert t.matches(event(type="a")) and not t.matches(event(type="b"))
    for bad in ({"cesql": "type = 'a'"}, {"regex": {"type": "a"}}, {"exact": {"type": ""}},
                {"any": {"exact": {"type": "a"}}}):
        with pytest.raises(ValueError):
            B.Trigger("t", "http://x/", filters=[bad])


def test_durations_and_backoff():
    assert B.parse_duration("PT0.5S") == 0.5
    assert B.parse_duration("PT1M30S") == 90 and B.parse_duration("P1DT1H") == 90000
    for bad in ("0.5s", "PT", "P", "500ms", ""):
        with pytest.raises(ValueError):
            B.parse_duration(bad)
    exp = B.Delivery(retry=5, backoff_delay_s=0.5)
    assert [exp.backoff_s(i) for i in range(5)] == [0.5, 1, 2, 4, 8]
    lin = B.Delivery(retry=3, backoff_policy="linear", backoff_delay_s=0.5)
    assert [lin.backoff_s(i) for i in range(3)] == [0, 0.5, 1.0]


SERVICES = {"generate": "http://127.0.0.1:8081", "embed": "http://127.0.0.1:8082",
            "audit": "http://127.0.0.1:8083"}


def test_repo_eventing_triggers(repo_root):
    docs = [d for p in sorted((repo_root / "eventing").glob("*.yaml"))
            for d in yaml.safe_load_all(p.read_text()) if isinstance(d, dict)]
    expected = {d["metadata"]["name"] for d in docs if d.get("kind") == "Trigger"}
    triggers = {t.name: t for t in B.load_triggers(SERVICES, repo_root / "eventing")}
    assert set(triggers) == expected  # every Trigger resolves against the three functions
    audit = triggers["audit-inference-events"]
    assert audit.subscriber == "http://127.0.0.1:8083/"
    assert audit.matches(event(type="dev.llmfn.inference.completed.v1"))
    assert not audit.matches(event(type="dev.llmfn.chat.completion.requested.v1"))
    assert audit.delivery == B.Delivery(retry=5, backoff_policy="exponential",
                                        backoff_delay_s=0.5,
                                        dead_letter_sink="http://127.0.0.1:8083/dead-letter")
    for t in triggers.values():
        assert any(t.subscriber.startswith(base + "/") for base in SERVICES.values())


STANDARD_YAML = """
apiVersion: eventing.knative.dev/v1
kind: Broker
metadata: {name: default}
---
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata: {name: legacy, namespace: ns}
spec:
  broker: default
  filter:
    attributes: {type: dev.llmfn.embeddings.requested.v1, source: ""}
  subscriber:
    ref: {apiVersion: serving.knative.dev/v1, kind: Service, name: embed, namespace: ns}
  delivery:
    retry: 2
    backoffPolicy: linear
    backoffDelay: PT0.2S
    timeout: PT30S
    retryAfterMax: PT1M
    deadLetterSink: {uri: "http://127.0.0.1:9999/dls"}
---
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata: {name: path}
spec:
  broker: default
  subscriber:
    ref: {apiVersion: serving.knative.dev/v1, kind: Service, name: generate}
    uri: /events
---
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata: {name: elsewhere}
spec:
  broker: default
  subscriber:
    ref: {apiVersion: serving.knative.dev/v1, kind: Service, name: not-here}
"""


def test_standard_knative_trigger_yaml(tmp_path):
    (tmp_path / "triggers.yaml").write_text(STANDARD_YAML)
    (tmp_path / "kustomization.yaml").write_text("kind: Kustomization\nresources: []\n")
    triggers = {t.name: t for t in B.load_triggers(SERVICES, tmp_path)}
    assert set(triggers) == {"legacy", "path"}  # `elsewhere` has no local service: skipped
    legacy = triggers["legacy"]
    assert legacy.subscriber == "http://127.0.0.1:8082/"
    assert legacy.matches(event(type="dev.llmfn.embeddings.requested.v1", source="/any"))
    assert not legacy.matches(event(type="dev.llmfn.chat.completion.requested.v1"))
    assert legacy.delivery == B.Delivery(retry=2, backoff_policy="linear", backoff_delay_s=0.2,
                                         timeout_s=30.0, retry_after_max_s=60.0,
                                         dead_letter_sink="http://127.0.0.1:9999/dls")
    assert triggers["path"].subscriber == "http://127.0.0.1:8081/events"
    assert triggers["path"].matches(event(type="whatever"))
    (tmp_path / "triggers.yaml").write_text(STANDARD_YAML.replace("retry: 2", "retries: 2"))
    with pytest.raises(ValueError, match="unknown delivery"):
        B.load_triggers(SERVICES, tmp_path)


# -- the data plane ------------------------------------------------------------------------------
def test_ingress_202_delivers_binary_with_prefer_reply(sinks, run_broker):
    sink = sinks()
    b = run_broker([B.Trigger("t", sink.url, filters=[{"exact": {"type": "x.a"}}])])
    sent = ce("x.a", {"hello": "wörld"}, traceparent="00-" + "1" * 32 + "-" + "2" * 16 + "-01")
    assert send(b.url, sent).status_code == 202
    assert send(b.url, ce("x.a", {"n": 2}, id_="structured"), structured=True).status_code == 202
    assert send(b.url, ce("x.other")).status_code == 202  # no trigger: accepted, dropped
    assert sink.wait(2) and b.wait_idle(WAIT_S)
    first, second = sorted(sink.records, key=lambda r: r["event"].get("id") != sent.get_id())
    h = first["headers"]
    assert h["prefer"] == "reply" and h["ce-type"] == "x.a" and h["ce-id"] == sent.get_id()
    assert h["ce-traceparent"] == sent.get_extension("traceparent")
    assert "ce-knativearrivaltime" in h and "ce-knativebrokerttl" not in h
    assert json.loads(first["body"]) == {"hello": "wörld"}
    # structured mode in, binary mode out, same data
    assert "ce-specversion" in second["headers"] and json.loads(second["body"]) == {"n": 2}
    assert len(sink.records) == 2
    bad = requests.post(b.url, json={"not": "an event"}, timeout=10)
    assert bad.status_code == 400
    no_id = requests.post(b.url, data=b"{}", timeout=10, headers={
        "ce-specversion": "1.0", "ce-type": "x.a", "ce-source": "/s",
        "content-type": "application/json"})
    assert no_id.status_code == 400 and "id" in no_id.json()["error"]


def test_retries_with_backoff_then_success(sinks, run_broker):
    sink = sinks(script(503, 404, 200))
    dls = sinks()
    delivery = B.Delivery(retry=4, backoff_delay_s=0.05, dead_letter_sink=dls.url)
    b = run_broker([B.Trigger("t", sink.url, delivery=delivery)])
    assert send(b.url, ce("x.a")).status_code == 202
    assert sink.wait(3) and b.wait_idle(WAIT_S)
    t = [r["t"] for r in sink.records]
    assert len(t) == 3 and t[1] - t[0] >= 0.05 and t[2] - t[1] >= 0.1  # exponential
    assert dls.records == []


def test_not_retried_4xx_goes_to_dead_letter_at_once(sinks, run_broker):
    sink = sinks(script((400, {}, b"bad request")))
    dls = sinks()
    b = run_broker([B.Trigger("t", sink.url, delivery=B.Delivery(retry=3, **FAST,
                                                                 dead_letter_sink=dls.url))])
    assert send(b.url, ce("x.a")).status_code == 202
    assert dls.wait(1) and b.wait_idle(WAIT_S)
    assert len(sink.records) == 1 and dls.records[0]["headers"]["ce-knativeerrorcode"] == "400"


@pytest.mark.parametrize("retry_after_max_s, low, high", [(0.4, 0.4, 5.0), (None, 0.0, 5.0)])
def test_retry_after_honoured_up_to_retry_after_max(sinks, run_broker, retry_after_max_s,
                                                    low, high):
    # Retry-After 30 s: capped at retryAfterMax when set, ignored when not (Knative's opt-in)
    sink = sinks(script((429, {"Retry-After": "30"}, b""), 200))
    delivery = B.Delivery(retry=2, **FAST, retry_after_max_s=retry_after_max_s)
    b = run_broker([B.Trigger("t", sink.url, delivery=delivery)])
    assert send(b.url, ce("x.a")).status_code == 202
    assert sink.wait(2) and b.wait_idle(WAIT_S)
    gap = sink.records[1]["t"] - sink.records[0]["t"]
    assert low <= gap < high, gap


def test_timeout_is_retried_then_dead_lettered(sinks, run_broker):
    release = threading.Event()

    def slow(rec):
        release.wait(1.0)
        return 200, {}, b""

    sink, dls = sinks(slow), sinks()
    delivery = B.Delivery(retry=1, **FAST, timeout_s=0.2, dead_letter_sink=dls.url)
    b = run_broker([B.Trigger("t", sink.url, delivery=delivery)])
    try:
        assert send(b.url, ce("x.a")).status_code == 202
        assert dls.wait(1)
    finally:
        release.set()
    assert len(sink.records) == 2
    h = dls.records[0]["headers"]
    assert h["ce-knativeerrorcode"] == "500" and h["ce-knativeerrordest"] == sink.url
    assert b"dispatch error" in base64.b64decode(h["ce-knativeerrordata"])


def test_dead_letter_carries_the_knative_error_extensions(sinks, run_broker):
    long_body = b"boom! " * 500  # 3000 bytes: base64 is cut to 1024 characters
    sink = sinks(lambda rec: (500, {"Content-Type": "text/plain"},
                              b"boom" if rec["event"].get("id") == "short" else long_body))
    dls = sinks()
    b = run_broker([B.Trigger("t", sink.url, delivery=B.Delivery(retry=1, **FAST,
                                                                 dead_letter_sink=dls.url))])
    sent = ce("x.a", {"k": "v"}, id_="short")
    assert send(b.url, sent).status_code == 202
    assert send(b.url, ce("x.a", id_="long")).status_code == 202
    assert dls.wait(2) and b.wait_idle(WAIT_S)
    assert len(sink.records) == 4  # 1 retry each
    dead = {r["event"].get("id"): r for r in dls.records}
    short = dead["short"]
    assert short["event"].get("type") == "x.a" and short["event"].get("source") == "/tests/broker"
    assert json.loads(short["body"]) == {"k": "v"}  # the original event, data included
    ext = {k: short["event"].get(k) for k in ("knativeerrordest", "knativeerrorcode",
                                              "knativeerrordata")}
    assert ext == {"knativeerrordest": sink.url, "knativeerrorcode": "500",
                   "knativeerrordata": base64.b64encode(b"boom").decode()}
    assert "prefer" not in short["headers"] and "ce-knativebrokerttl" not in short["headers"]
    data = dead["long"]["event"].get("knativeerrordata")
    assert len(data) == 1024 and base64.b64decode(data) == long_body[:768]


@pytest.mark.parametrize("structured", [False, True])
def test_reply_reenters_the_broker(sinks, run_broker, structured):
    replier = sinks(reply_with("x.reply", structured=structured))
    consumer = sinks()
    b = run_broker([B.Trigger("requests", replier.url, filters=[{"exact": {"type": "x.req"}}]),
                    B.Trigger("replies", consumer.url, filters=[{"exact": {"type": "x.reply"}}])])
    assert send(b.url, ce("x.req", id_="q1")).status_code == 202
    assert consumer.wait(1) and b.wait_idle(WAIT_S)
    got = consumer.records[0]
    assert got["event"].get("id") == "r-q1" and got["event"].get("source") == "/tests/replier"
    assert json.loads(got["body"]) == {"reply_to": 0}
    assert "ce-knativebrokerttl" not in got["headers"]
    assert len(replier.records) == 1 and len(consumer.records) == 1


def test_ttl_stops_a_reply_loop(sinks, run_broker):
    counter = iter(range(1000))

    def echo(rec):  # replies with an event of the same type: a loop
        reply = CloudEvent({"type": "x.loop", "source": "/loop", "id": f"l{next(counter)}"}, None)
        msg = to_binary_event(reply)
        return 200, dict(msg.headers), msg.body

    sink = sinks(echo)
    b = run_broker([B.Trigger("loop", sink.url, filters=[{"exact": {"type": "x.loop"}}])],
                   default_ttl=4)
    assert send(b.url, ce("x.loop", knativebrokerttl="3")).status_code == 202
    assert sink.wait(3) and b.wait_idle(WAIT_S)
    time.sleep(0.2)
    assert b.wait_idle(WAIT_S) and len(sink.records) == 3  # TTL 3, 2, 1; the reply at 0 dropped
    assert send(b.url, ce("x.loop")).status_code == 202  # no TTL: the broker's default (4)
    assert sink.wait(7) and b.wait_idle(WAIT_S)
    time.sleep(0.2)
    assert b.wait_idle(WAIT_S) and len(sink.records) == 7
    expired = send(b.url, ce("x.loop", knativebrokerttl="0"))
    assert expired.status_code == 400


def test_full_queue_answers_503_and_loses_nothing(sinks, run_broker):
    gate = threading.Event()
    fast = sinks()
    slow = sinks(lambda rec: (gate.wait(WAIT_S), (202, {}, b""))[1])
    b = run_broker([B.Trigger("fast", fast.url), B.Trigger("slow", slow.url)],
                   queue_size=2, workers=1)
    try:
        assert send(b.url, ce("x.a", id_="e1")).status_code == 202
        assert slow.wait(1)  # e1 in flight at the slow subscriber, its queue empty
        assert [send(b.url, ce("x.a", id_=i)).status_code for i in ("e2", "e3")] == [202, 202]
        full = send(b.url, ce("x.a", id_="e4"))
        assert full.status_code == 503 and full.headers["Retry-After"] == "1"
        assert fast.wait(3) and b.stats()["fast"]["queued"] == 0
    finally:
        gate.set()
    for _ in range(200):  # the producer retries, as it must on a 503
        if send(b.url, ce("x.a", id_="e4")).status_code == 202:
            break
        time.sleep(0.05)
    assert b.wait_idle(WAIT_S)
    # every event exactly once at each trigger: e4 was queued for none when refused
    assert sorted(fast.ids()) == sorted(slow.ids()) == ["e1", "e2", "e3", "e4"]


def test_replies_log_records_reply_events_only(sinks, run_broker, tmp_path):
    path = tmp_path / "replies.jsonl"
    generate = sinks(reply_with("dev.llmfn.chat.completion.v1"))
    b = run_broker([B.Trigger("generate", generate.url, filters=[
        {"exact": {"type": "dev.llmfn.chat.completion.requested.v1"}}]),
        B.replies_trigger(path)])
    assert send(b.url, ce("dev.llmfn.chat.completion.requested.v1", id_="c1")).status_code == 202
    assert send(b.url, ce("dev.llmfn.inference.completed.v1")).status_code == 202
    assert generate.wait(1)
    for _ in range(100):
        if b.wait_idle(WAIT_S) and path.exists():
            break
        time.sleep(0.05)
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [(x["attributes"]["type"], x["attributes"]["id"]) for x in lines] == [
        ("dev.llmfn.chat.completion.v1", "r-c1")]
    assert lines[0]["data"] == {"reply_to": 0}


def test_callable_subscriber_errors_are_retried(run_broker):
    calls = []

    def flaky(ev):
        calls.append(ev.get("id"))
        if len(calls) < 3:
            raise RuntimeError("not yet")

    b = run_broker([B.Trigger("t", flaky, delivery=B.Delivery(retry=3, **FAST))])
    assert b.publish(B.Event.from_http(*_binary(ce("x.a", id_="k"))))[0] == 202
    assert b.wait_idle(WAIT_S) and calls == ["k", "k", "k"]


def _binary(event: CloudEvent):
    msg = to_binary_event(event)
    return msg.headers, msg.body


def test_stop_delivers_what_is_queued_then_closes(sinks):
    sink = sinks(lambda rec: (time.sleep(0.05), (202, {}, b""))[1])
    b = B.Broker([B.Trigger("t", sink.url)], port=0, workers=1, queue_size=10).start()
    for i in range(5):
        assert send(b.url, ce("x.a", id_=f"s{i}")).status_code == 202
    assert b.stop(grace_s=WAIT_S) == 0
    assert sorted(sink.ids()) == [f"s{i}" for i in range(5)]
    with pytest.raises(requests.ConnectionError):
        send(b.url, ce("x.a"))


def test_stop_reports_what_it_could_not_deliver(sinks):
    gate = threading.Event()
    sink = sinks(lambda rec: (gate.wait(WAIT_S), (202, {}, b""))[1])
    b = B.Broker([B.Trigger("t", sink.url)], port=0, workers=1, queue_size=10).start()
    try:
        for i in range(3):
            assert send(b.url, ce("x.a", id_=f"s{i}")).status_code == 202
        assert sink.wait(1)
        assert b.stop(grace_s=0.2) == 3  # one in flight, two queued
    finally:
        gate.set()
