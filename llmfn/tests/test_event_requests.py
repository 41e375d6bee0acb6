"""Request events: served by a direct call of the API route's handler, answered with a reply
event (Knative's data plane), ids derived from the request so a redelivery is the same request."""
from __future__ import annotations

import datetime as dt
import threading

import pytest
from cloudevents.core.bindings.http import (
    HTTPMessage,
    from_http_event,
    to_binary_event,
    to_structured_event,
)
from cloudevents.core.v1.event import CloudEvent

from llmfn import event_requests, routes
from llmfn.contract import FunctionSpec, RequestEvent, Worker
from llmfn.errors import InvalidRequest, NotReady, QueueFull
from llmfn.runtime import create_runtime
from tests.support.eventsink import running_receiver

EMBED = "dev.llmfn.embeddings.requested.v1"
COMPLETE = "dev.llmfn.completion.requested.v1"
CORRELATION = "8f1e:QmFzZTY0L2VuY3J5cHRlZD09:2"  # RequestReply's <id>:<encrypted id>:<replica>
TIME = dt.datetime(2026, 3, 4, 5, 6, 7, tzinfo=dt.UTC)


class FakeAPI(Worker):
    """Stands for an OpenAI route's handler: echoes what it got and the request's origin."""

    def __init__(self, runtime):
        self.rt, self.fail = runtime, None
        self.seen = []

    def __call__(self, inbound: routes.Inbound) -> routes.Result:
        body = inbound.body()
        if self.fail is not None:
            raise self.fail
        if "bad" in body:
            raise InvalidRequest("'bad' is not a parameter.", param="bad")
        origin = inbound.origin
        self.seen.append(inbound)
        self.rt.emit_inference(origin, endpoint=inbound.route, status=200)
        return routes.Result({"id": f"cmpl-{origin.rid}", "created": origin.created, "got": body})


@pytest.fixture
def served(tmp_path):
    with running_receiver() as sink:
        weights = tmp_path / "m.gguf"
        weights.write_bytes(b"GGUF")

        def register(app, rt, settings):
            api = FakeAPI(rt)
            routes.add(app, "/v1/completions", "completions", api)
            return api

        spec = FunctionSpec("generate", routes=register,
                            model=lambda cfg: lambda path, model: path,
                            events={COMPLETE: RequestEvent("/v1/completions",
                                                           "dev.llmfn.completion.v1",
                                                           seeded=True)})
        rt = create_runtime(spec, {
            "MODEL_URI": f"file://{weights}", "MODEL_CACHE_DIR": str(tmp_path / "c"),
            "API_KEYS": "secret", "K_SINK": sink.url, "K_SERVICE": "gen",
            "K_REVISION": "gen-00007", "EVENTS_FLUSH_S": "5"})
        yield rt, rt.app.test_client(), sink
        rt.stop()


def request_event(data=None, **attrs) -> CloudEvent:
    a = {"type": COMPLETE, "source": "/producer", "id": "req-1", "time": TIME,
         "datacontenttype": "application/json", "subject": "doc-7",
         "traceparent": "00-" + "a" * 32 + "-" + "b" * 16 + "-01", "tenant": "acme", **attrs}
    return CloudEvent(a, {"prompt": "hi", "max_tokens": 2} if data is None else data)


def post(client, event, mode="binary"):
    msg = (to_structured_event if mode == "structured" else to_binary_event)(event)
    return client.post("/", headers=dict(msg.headers), data=msg.body)


def reply_of(resp):
    assert resp.status_code == 200, resp.get_data()
    assert resp.headers["ce-specversion"] == "1.0"  # binary mode
    return from_http_event(HTTPMessage(headers=dict(resp.headers), body=resp.get_data()))


@pytest.mark.parametrize("mode", ["binary", "structured"])
def test_reply_carries_the_answer_and_the_correlation(served, mode):
    _, client, _ = served
    reply = reply_of(post(client, request_event(correlationid=CORRELATION), mode))
    assert reply.get_type() == "dev.llmfn.completion.v1"
    assert reply.get_source() == "/llmfn/generate/gen"  # no revision: same on every revision
    assert reply.get_extension("causationid") == "req-1"
    assert reply.get_extension("correlationid") == CORRELATION
    assert reply.get_extension("replyid") == CORRELATION  # copied as is
    assert reply.get_subject() == "doc-7" and reply.get_extension("tenant") == "acme"
    assert reply.get_extension("traceparent") == "00-" + "a" * 32 + "-" + "b" * 16 + "-01"
    data = reply.get_data()
    assert data["got"]["prompt"] == "hi" and data["created"] == int(TIME.timestamp())
    assert isinstance(data["got"]["seed"], int)  # derived from the event


def test_without_correlation_the_request_id_correlates(served):
    reply = reply_of(post(served[1], request_event()))
    assert reply.get_extension("correlationid") == "req-1"
    assert reply.get_extension("replyid") is None


def test_a_redelivery_is_the_same_request(served):
    """Same reply id, source and data; created from the event time; the same seed."""
    _, client, _ = served
    first = post(client, request_event(knativearrivaltime="2026-03-04T05:06:08Z"))
    again = post(client, request_event(knativearrivaltime="2026-03-04T05:09:00Z"), "structured")
    a, b = reply_of(first), reply_of(again)
    assert (a.get_id(), a.get_source()) == (b.get_id(), b.get_source())
    assert first.get_data() == again.get_data()  # byte-identical data
    other = reply_of(post(client, request_event(id="req-2")))
    assert other.get_id() != a.get_id()
    assert other.get_data()["got"]["seed"] != a.get_data()["got"]["seed"]
    given = reply_of(post(client, request_event(id="req-3", data={"prompt": "x", "seed": 5})))
    assert given.get_data()["got"]["seed"] == 5


def test_created_falls_back_to_the_broker_arrival_time(served):
    event = request_event(knativearrivaltime="2026-03-04T05:06:08Z")
    msg = to_binary_event(event)
    headers = {k: v for k, v in msg.headers.items() if k != "ce-time"}
    resp = served[1].post("/", headers=headers, data=msg.body)
    arrival = dt.datetime(2026, 3, 4, 5, 6, 8, tzinfo=dt.UTC)
    assert reply_of(resp).get_data()["created"] == int(arrival.timestamp())
    assert reply_of(resp).get_extension("knativearrivaltime") is None  # the Broker's own


def test_requests_that_can_never_succeed_get_a_failed_reply(served):
    _, client, _ = served
    cases = [
        (request_event(type=EMBED), "unknown_event_type"),
        (request_event(data={"prompt": "x", "bad": 1}), None),
        (request_event(data={"prompt": "x", "stream": True}), None),
        (request_event(data=["not", "an", "object"]), None),
    ]
    for event, code in cases:
        reply = reply_of(post(client, event))
        assert reply.get_type() == event_requests.FAILED
        error = reply.get_data()["error"]
        assert set(error) == {"message", "type", "param", "code"}
        assert error["code"] == code or error["param"] in ("bad", "stream", "data"), error
        assert reply.get_extension("causationid") == "req-1"


@pytest.mark.parametrize("err,status", [(QueueFull("full", retry_after_s=3), 429),
                                        (NotReady("loading", retry_after_s=3), 503)])
def test_requests_that_may_succeed_later_are_retried(served, err, status):
    rt, client, _ = served
    rt.service.fail = err
    resp = post(client, request_event())
    assert resp.status_code == status and resp.headers["Retry-After"] == "3"
    assert "ce-type" not in resp.headers and resp.json["error"]["message"] == err.message


def test_not_an_event_is_a_plain_400_and_keys_guard_only_the_http_api(served):
    _, client, _ = served
    resp = client.post("/", json={"prompt": "hi"})
    assert resp.status_code == 400 and resp.json["error"]["code"] == "invalid_event"
    assert client.post("/v1/completions", json={"prompt": "hi"}).status_code == 401
    assert reply_of(post(client, request_event())).get_type() == "dev.llmfn.completion.v1"


def test_the_inference_event_is_derived_from_the_request(served):
    """Audit counts a redelivered request once: its inference event has the same id and a
    source without the revision, and it carries the trace."""
    rt, client, sink = served
    reply = reply_of(post(client, request_event()))
    post(client, request_event(), "structured")
    rt.stop()  # flushes
    assert sink.wait_requests(2)
    heads = [{k.lower(): v for k, v in e["headers"].items()} for e in sink.events()]
    assert len({(h["ce-id"], h["ce-source"]) for h in heads}) == 1
    assert heads[0]["ce-source"] == "/llmfn/generate/gen"
    assert heads[0]["ce-traceparent"] == "00-" + "a" * 32 + "-" + "b" * 16 + "-01"
    assert heads[0]["ce-id"] != reply.get_id()
    resp = post(client, request_event())  # stopping: another instance answers
    assert resp.status_code == 503 and resp.headers["Retry-After"]


def test_an_event_admitted_before_the_stop_gets_its_reply(served, monkeypatch):
    """The request event was let in before stop(); its own call to the API route, made after the
    stop began, is answered (not refused as a new request): the reply carries the answer."""
    rt, client, _ = served
    rt.start()
    assert rt.host.wait(30)
    inside, release = threading.Event(), threading.Event()
    data_of = event_requests.EventRequests._data

    def held(event):
        inside.set()
        release.wait(30)
        return data_of(event)

    monkeypatch.setattr(event_requests.EventRequests, "_data", staticmethod(held))
    answers = {}
    sender = threading.Thread(target=lambda: answers.setdefault(
        "reply", post(client, request_event(), "binary")))
    sender.start()
    assert inside.wait(30)
    stopper = threading.Thread(target=rt.stop)
    stopper.start()
    late = post(rt.app.test_client(), request_event(id="req-late"))
    assert late.status_code == 503 and late.get_json()["error"]["code"] == "shutting_down"
    release.set()
    sender.join(30)
    stopper.join(30)
    reply = reply_of(answers["reply"])
    assert reply.get_type() == "dev.llmfn.completion.v1"
    assert reply.get_data()["got"]["prompt"] == "hi"


def test_the_route_handler_is_called_directly_with_the_events_origin(served):
    """The handler the HTTP route calls answers the event: no second HTTP request (the route's
    own metrics do not see it), the route and the disconnect signal of the delivery reach it."""
    rt, client, _ = served
    gone = threading.Event()
    msg = to_binary_event(request_event())
    resp = client.post("/", headers=dict(msg.headers), data=msg.body,
                       environ_overrides={routes.DISCONNECTED_KEY: gone})
    assert reply_of(resp).get_type() == "dev.llmfn.completion.v1"
    (inbound,) = rt.service.seen
    assert inbound.route == "/v1/completions" and inbound.disconnected is gone
    assert inbound.origin.event_source == "/llmfn/generate/gen"
    assert inbound.origin.extensions == {"traceparent": "00-" + "a" * 32 + "-" + "b" * 16 + "-01"}
    assert routes.handler(rt.app, "/v1/completions") is rt.service
    metrics = client.get("/metrics").get_data(as_text=True)
    assert 'llmfn_requests_total{route="/",status="200"} 1.0' in metrics
    assert 'route="/v1/completions"' not in metrics
    http = client.post("/v1/completions", json={"prompt": "hi"},
                       headers={"Authorization": "Bearer secret"})
    assert http.status_code == 200 and http.get_json()["got"] == {"prompt": "hi"}
    last = rt.service.seen[-1]
    assert last.route == "/v1/completions" and last.origin.event_id is None


def test_a_type_whose_route_has_no_handler_is_refused_at_start():
    """A contract naming a route its routes did not add fails when the runtime is built."""
    spec = FunctionSpec("fn", routes=lambda app, rt, settings: Worker(),
                        events={COMPLETE: RequestEvent("/v1/missing", "dev.x.v1")})
    with pytest.raises(KeyError):
        create_runtime(spec, {})
