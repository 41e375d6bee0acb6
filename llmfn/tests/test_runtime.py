"""Runtime: one function process wired together (host, app, events, metrics, the function's
model loop), readiness while stopping, the inference event it emits, and stop()."""
from __future__ import annotations

import threading

from llmfn.contract import FunctionSpec, Worker
from llmfn.model_runtime import Runtime
from llmfn.origin import Origin
from llmfn.runtime import MisconfiguredRuntime, build_runtime, create_runtime
from tests.support.eventsink import running_receiver

WAIT_S = 30


class Loop(Worker):
    """What a function's routes return: its worker, drained on stop."""

    def __init__(self):
        self.drained_with = []

    def drain(self, grace_s: float) -> bool:
        self.drained_with.append(grace_s)
        return True


def make(tmp_path, **env) -> tuple[Runtime, Loop]:
    weights = tmp_path / "m.gguf"
    weights.write_bytes(b"GGUF")
    loop = Loop()
    spec = FunctionSpec("fn", routes=lambda app, runtime, settings: loop,
                        model=lambda cfg: lambda path, model: path)
    rt = create_runtime(spec, {"MODEL_URI": f"file://{weights}",
                               "MODEL_CACHE_DIR": str(tmp_path / "c"),
                               "SHUTDOWN_GRACE_S": "3", "EVENTS_FLUSH_S": "2", **env})
    assert isinstance(rt, Runtime)
    return rt, loop


def test_start_ready_stop(tmp_path):
    rt, loop = make(tmp_path)
    assert rt.ready() == (False, "not started")
    rt.start()
    assert rt.host.wait(WAIT_S) and rt.ready() == (True, "ready")
    assert rt.app.extensions["llmfn.runtime"] is rt and rt.service is loop
    rt.stop()
    assert rt.ready() == (False, "stopping") and rt.alive()[0]
    rt.stop()  # idempotent: drained once, with what the (idle) request wait left of the grace
    assert len(loop.drained_with) == 1 and 2.0 < loop.drained_with[0] <= 3.0


def test_inference_event_fields_and_tokens_per_second(tmp_path):
    with running_receiver() as sink:
        rt, _ = make(tmp_path, K_SINK=sink.url, K_SERVICE="svc", K_REVISION="svc-1")
        rt.start()
        assert rt.host.wait(WAIT_S)
        assert rt.emit_inference(Origin("r1", 0), endpoint="/v1/x", status=200,
                                 completion_tokens=10, generation_s=2.0, prompt_tokens=3)
        assert rt.emit_inference(Origin("r2", 0), endpoint="/v1/x", status=400, error_code=None)
        from_event = Origin("r3", 0, event_id="e3", event_source="/llmfn/fn/svc",
                            extensions={"traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01"})
        assert rt.emit_inference(from_event, endpoint="/v1/x", status=200)
        rt.stop()  # flushes the events
        assert sink.wait_requests(3)
        events = {e["data"]["request_id"]: e for e in sink.events()}
        ok, bad = events["r1"]["data"], events["r2"]["data"]
    def attrs(rid):
        h = {k.lower(): v for k, v in events[rid]["headers"].items()}
        return h["ce-id"], h["ce-source"], h.get("ce-traceparent")

    assert attrs("r1") == ("r1", "/llmfn/fn/svc/svc-1", None)
    assert attrs("r3") == ("e3", "/llmfn/fn/svc", from_event.extensions["traceparent"])
    assert ok["tokens_per_s"] == 5.0 and ok["function"] == "fn"
    assert (ok["service"], ok["revision"]) == ("svc", "svc-1")
    assert len(ok["model_sha256"]) == 64 and ok["input_count"] == 1
    assert bad["tokens_per_s"] is None and bad["completion_tokens"] == 0


def test_stop_waits_for_the_loop_before_flushing(tmp_path):
    """The loop drains first (in-flight requests still emit their events), then events flush."""
    order, gate = [], threading.Event()

    class SlowLoop(Loop):
        def drain(self, grace_s):
            gate.wait(WAIT_S)
            order.append("drained")
            return True

    rt, _ = make(tmp_path)
    rt.service = SlowLoop()
    close = rt.events.close

    def closing(flush_s):
        order.append("flushed")
        return close(flush_s)

    rt.events.close = closing
    stopper = threading.Thread(target=rt.stop)
    stopper.start()
    gate.set()
    stopper.join(WAIT_S)
    assert order == ["drained", "flushed"]


def test_a_request_admitted_before_the_stop_is_answered(tmp_path):
    """A request let in before stop() that asks for the model after it began still gets it; one
    arriving after is refused 503 `shutting_down`; the loop drains only once the admitted one
    ended (the loop keeps taking its work)."""
    rt, loop = make(tmp_path)
    inside, release = threading.Event(), threading.Event()

    def slow():
        inside.set()
        release.wait(WAIT_S)
        return {"model": str(rt.model())}

    rt.app.add_url_rule("/slow", "slow", slow, methods=["POST"])
    rt.start()
    assert rt.host.wait(WAIT_S)
    answers = {}
    admitted = threading.Thread(
        target=lambda: answers.setdefault("admitted", rt.app.test_client().post("/slow")))
    admitted.start()
    assert inside.wait(WAIT_S)
    stopper = threading.Thread(target=rt.stop)
    stopper.start()
    late = rt.app.test_client().post("/slow")
    assert late.status_code == 503 and late.headers["Retry-After"]
    assert late.get_json()["error"]["code"] == "shutting_down"
    assert rt.stopping and loop.drained_with == []  # waiting for the admitted request
    release.set()
    admitted.join(WAIT_S)
    stopper.join(WAIT_S)
    assert answers["admitted"].status_code == 200, answers["admitted"].get_data()
    assert answers["admitted"].get_json()["model"].endswith(".gguf")
    assert len(loop.drained_with) == 1 and 0 < loop.drained_with[0] <= 3.0


def test_stop_keeps_answering_for_the_minimum_even_when_idle(tmp_path):
    """Nothing in flight: stop() still holds the port open for SHUTDOWN_MIN_S, answering new
    requests 503 `shutting_down` + Retry-After, so a router polling readiness sees "stopping"
    before the server closes."""
    rt, loop = make(tmp_path, SHUTDOWN_MIN_S="5")
    rt.start()
    assert rt.host.wait(WAIT_S)
    stopper = threading.Thread(target=rt.stop)
    stopper.start()
    while not loop.drained_with and stopper.is_alive():
        threading.Event().wait(0.01)
    assert loop.drained_with  # drained (nothing in flight) ...
    resp = rt.app.test_client().get("/v1/models")
    assert resp.status_code == 503 and resp.get_json()["error"]["code"] == "shutting_down"
    assert rt.app.test_client().get("/health/readiness").status_code == 503
    assert stopper.is_alive()  # ... and still within the minimum
    stopper.join(WAIT_S)
    assert not stopper.is_alive()


def test_settings_it_cannot_use_make_a_runtime_that_says_why(tmp_path):
    """build_runtime: a SettingsError (or an unresolved func.yaml template) while the runtime
    is built gives one that answers 503 naming the variable on every route, never a 500."""
    spec = FunctionSpec("generate", routes=lambda app, rt, settings: Worker(),
                        model=lambda cfg: lambda *a: None)

    for cfg, variable in [({"N_CTX": "lots"}, "N_CTX"),
                          ({"S3_ENDPOINT_URL": "minio:9000"}, "S3_ENDPOINT_URL"),
                          ({"API_KEYS": "{{ secret:llmfn-api-keys:API_KEYS }}"}, "API_KEYS")]:
        rt = build_runtime(spec, cfg)
        assert isinstance(rt, MisconfiguredRuntime)
        client = rt.app.test_client()
        for probe in ("readiness", "liveness"):
            r = client.get(f"/health/{probe}")
            assert r.status_code == 503 and variable in r.get_data(as_text=True)
        for method, path in [("POST", "/v1/chat/completions"), ("GET", "/"), ("GET", "/v1/models"),
                             ("DELETE", "/x/y")]:
            r = client.open(path, method=method, json={})
            assert r.status_code == 503, (method, path)
            assert r.get_json()["error"]["code"] == "invalid_settings"
            assert variable in r.get_json()["error"]["message"]
        assert client.get("/metrics").status_code == 200
    weights = tmp_path / "m.gguf"
    weights.write_bytes(b"GGUF")
    assert not isinstance(build_runtime(spec, {"MODEL_URI": f"file://{weights}"}),
                          MisconfiguredRuntime)
