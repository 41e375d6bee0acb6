"""Tests for llmfn.events against a real HTTP receiver on 127.0.0.1 (no mocks)."""
from __future__ import annotations

import json
import logging
import os
import socket
import threading
from datetime import datetime
from pathlib import Path

import msgspec
import pytest
from prometheus_client import CollectorRegistry

from llmfn.events import (
    INFERENCE_COMPLETED,
    TYPE_PREFIX,
    EventEmitter,
    InferenceData,
    InferenceRecord,
    api_of,
    event_source,
    validate_inference_data,
)
from llmfn.settings import EventSettings, SettingsError, build
from tests.support.eventsink import WAIT_S, running_receiver

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures"
GOLDEN = FIXTURES / "cloudevent_inference_completed_v1.json"
REQUEST_ID = "0f4c6a0e6b1d4a5e9c2f3b7a8d9e0f11"


@pytest.fixture
def receiver():
    with running_receiver() as rec:
        yield rec


@pytest.fixture
def make_emitter():
    """Build emitters from env-style settings; all are closed at teardown."""
    made = []

    def make(env: dict, function: str = "generate"):
        env = {"EVENTS_BACKOFF_S": "0.01", **env}
        registry = CollectorRegistry()
        emitter = EventEmitter(build(EventSettings, env), function=function, registry=registry)
        made.append(emitter)
        return emitter, registry

    yield make
    for emitter in made:
        emitter.close(timeout_s=0)


def record(**overrides) -> InferenceRecord:
    fields = dict(request_id=REQUEST_ID, function="generate", model="smollm2-135m-instruct",
                  model_sha256="ab" * 32, service="generate", revision="generate-00001",
                  endpoint="/v1/chat/completions", status=200, error_code=None,
                  prompt_tokens=12, completion_tokens=8, input_count=1, ttft_s=0.125,
                  duration_s=0.5, tokens_per_s=21.5, finish_reason="stop", cold_start=True,
                  stream=True, time="2026-01-02T03:04:05.678Z", prompt="Hi", output="Hello!")
    fields.update(overrides)
    return InferenceRecord(**fields)


def count(registry, name, **labels) -> float:
    return registry.get_sample_value(name, labels or None) or 0.0


def ce_headers(req: dict) -> dict:
    return {k: v for k, v in req["headers"].items() if k.startswith("ce-") or k == "content-type"}


def test_binary_mode_headers_and_body(receiver, make_emitter):
    emitter, registry = make_emitter({"K_SINK": receiver.url, "K_SERVICE": "generate",
                                      "K_REVISION": "generate-00001"})
    data = record().to_data(False)
    assert emitter.emit(INFERENCE_COMPLETED, data, id=REQUEST_ID, subject="m") is True
    assert emitter.flush(WAIT_S)
    [req] = receiver.requests
    h = req["headers"]
    assert h["ce-specversion"] == "1.0"
    assert h["ce-type"] == INFERENCE_COMPLETED and h["ce-type"].startswith(TYPE_PREFIX)
    assert h["ce-source"] == "/llmfn/generate/generate/generate-00001"
    assert h["ce-id"] == REQUEST_ID
    assert h["ce-subject"] == "m"
    assert datetime.fromisoformat(h["ce-time"]).tzinfo is not None
    assert h["content-type"] == "application/json"
    assert json.loads(req["body"]) == data
    assert count(registry, "llmfn_events_sent_total") == 1


def test_golden_inference_event(receiver, make_emitter):
    emitter, _ = make_emitter({"K_SINK": receiver.url, "K_SERVICE": "generate",
                               "K_REVISION": "generate-00001",
                               "K_CE_OVERRIDES": '{"extensions": {"cluster": "local"}}'})
    assert emitter.emit_inference(record())
    assert emitter.flush(WAIT_S)
    [req] = receiver.requests
    headers = ce_headers(req)
    assert headers["ce-id"] == json.loads(req["body"])["request_id"]
    headers.update({"ce-id": "<id>", "ce-time": "<time>"})  # vary per event
    got = {"headers": dict(sorted(headers.items())), "data": json.loads(req["body"])}
    if os.environ.get("LLMFN_UPDATE_GOLDEN") == "1":
        FIXTURES.mkdir(parents=True, exist_ok=True)
        GOLDEN.write_text(json.dumps(got, indent=2) + "\n")
    assert got == json.loads(GOLDEN.read_text())
    assert validate_inference_data(got["data"]) == []


def test_ce_overrides_become_headers(receiver, make_emitter):
    overrides = {"extensions": {"cluster": "kind", "tenant": "a1", "replay": True, "shard": 3}}
    emitter, _ = make_emitter({"K_SINK": receiver.url, "K_CE_OVERRIDES": json.dumps(overrides)})
    assert emitter.emit(INFERENCE_COMPLETED, {"x": 1})
    assert emitter.flush(WAIT_S)
    h = receiver.requests[0]["headers"]
    assert (h["ce-cluster"], h["ce-tenant"], h["ce-replay"], h["ce-shard"]) == \
        ("kind", "a1", "true", "3")
    assert h["ce-source"] == "/llmfn/generate"


@pytest.mark.parametrize("raw", ["{not json", "[1]", '{"extensions": []}',
                                 '{"extensions": {"Bad-Name": "x"}}',
                                 '{"extensions": {"source": "x"}}',
                                 '{"extensions": {"nested": {"a": 1}}}'])
def test_bad_ce_overrides_fail_at_construction(raw):
    with pytest.raises(SettingsError, match="K_CE_OVERRIDES"):
        EventEmitter(build(EventSettings, {"K_CE_OVERRIDES": raw}), function="generate")


def test_bad_sink_url_fails_at_construction():
    with pytest.raises(SettingsError, match="K_SINK"):
        EventEmitter(build(EventSettings, {"K_SINK": "broker.default"}), function="generate")


def test_source_scheme():
    assert event_source("embed") == "/llmfn/embed"
    assert event_source("embed", "embed", "") == "/llmfn/embed"
    assert event_source("embed", "embed", "embed-00002") == "/llmfn/embed/embed/embed-00002"


def test_retries_503_then_succeeds(receiver, make_emitter):
    receiver.script.extend([503, 503, 503])
    emitter, registry = make_emitter({"K_SINK": receiver.url, "EVENTS_MAX_ATTEMPTS": "5"})
    assert emitter.emit(INFERENCE_COMPLETED, {"x": 1}, id="abc")
    assert emitter.flush(WAIT_S)
    assert [r["status"] for r in receiver.requests] == [503, 503, 503, 202]
    assert {r["headers"]["ce-id"] for r in receiver.requests} == {"abc"}
    assert count(registry, "llmfn_events_sent_total") == 1
    assert count(registry, "llmfn_events_retries_total") == 3
    assert count(registry, "llmfn_events_dropped_total", reason="failed") == 0


def test_retries_429(receiver, make_emitter):
    receiver.script.append(429)
    emitter, registry = make_emitter({"K_SINK": receiver.url})
    assert emitter.emit(INFERENCE_COMPLETED, {"x": 1})
    assert emitter.flush(WAIT_S)
    assert [r["status"] for r in receiver.requests] == [429, 202]
    assert count(registry, "llmfn_events_retries_total") == 1


def test_400_is_not_retried(receiver, make_emitter, caplog):
    receiver.script.append(400)
    emitter, registry = make_emitter({"K_SINK": receiver.url})
    with caplog.at_level(logging.WARNING, logger="llmfn.events"):
        assert emitter.emit(INFERENCE_COMPLETED, {"x": 1})
        assert emitter.flush(WAIT_S)
    assert [r["status"] for r in receiver.requests] == [400]
    assert count(registry, "llmfn_events_retries_total") == 0
    assert count(registry, "llmfn_events_dropped_total", reason="failed") == 1
    assert "HTTP 400" in caplog.text


def test_gives_up_after_max_attempts(receiver, make_emitter):
    receiver.script.extend([503] * 5)
    emitter, registry = make_emitter({"K_SINK": receiver.url, "EVENTS_MAX_ATTEMPTS": "3"})
    assert emitter.emit(INFERENCE_COMPLETED, {"x": 1})
    assert emitter.flush(WAIT_S)
    assert len(receiver.requests) == 3
    assert count(registry, "llmfn_events_retries_total") == 2
    assert count(registry, "llmfn_events_dropped_total", reason="failed") == 1
    assert count(registry, "llmfn_events_sent_total") == 0


def test_retries_after_timeout(receiver, make_emitter):
    receiver.script.append("hang")  # first request hangs past EVENTS_TIMEOUT_S
    emitter, registry = make_emitter({"K_SINK": receiver.url, "EVENTS_TIMEOUT_S": "1.0"})
    assert emitter.emit(INFERENCE_COMPLETED, {"x": 1})
    assert emitter.flush(WAIT_S)
    assert len(receiver.requests) == 2 and receiver.requests[1]["status"] == 202
    assert count(registry, "llmfn_events_retries_total") == 1
    assert count(registry, "llmfn_events_sent_total") == 1


def test_connection_refused_is_retried_then_dropped(make_emitter):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    emitter, registry = make_emitter({"K_SINK": f"http://127.0.0.1:{port}/",
                                      "EVENTS_MAX_ATTEMPTS": "2"})
    assert emitter.emit(INFERENCE_COMPLETED, {"x": 1})
    assert emitter.flush(WAIT_S)
    assert count(registry, "llmfn_events_retries_total") == 1
    assert count(registry, "llmfn_events_dropped_total", reason="failed") == 1


def test_queue_full_drops_and_never_blocks(receiver, make_emitter, caplog):
    receiver.default = "hang"
    emitter, registry = make_emitter({"K_SINK": receiver.url, "EVENTS_QUEUE_SIZE": "2",
                                      "EVENTS_TIMEOUT_S": str(WAIT_S * 2)})
    assert emitter.emit(INFERENCE_COMPLETED, {"n": 0})
    assert receiver.wait_requests(1)  # event 0 is in flight, the queue is empty
    results, done = [], threading.Event()

    def produce():
        results.extend(emitter.emit(INFERENCE_COMPLETED, {"n": n}) for n in range(1, 7))
        done.set()

    with caplog.at_level(logging.WARNING, logger="llmfn.events"):
        threading.Thread(target=produce, daemon=True).start()
        assert done.wait(WAIT_S), "emit blocked while the sink hung"
    assert results == [True, True, False, False, False, False]
    assert count(registry, "llmfn_events_dropped_total", reason="queue_full") == 4
    assert count(registry, "llmfn_events_queue_depth") == 2
    warnings = [r for r in caplog.records if "queue full" in r.getMessage()]
    assert 1 <= len(warnings) < 4  # rate-limited
    receiver.release.set()
    assert emitter.flush(WAIT_S)
    assert sorted(json.loads(r["body"])["n"] for r in receiver.requests) == [0, 1, 2]
    assert count(registry, "llmfn_events_sent_total") == 3
    assert count(registry, "llmfn_events_queue_depth") == 0


def test_no_sink_disables_emitter(make_emitter):
    before = {t.name for t in threading.enumerate()}
    emitter, registry = make_emitter({}, function="nosink")
    assert not emitter.enabled
    assert emitter.emit(INFERENCE_COMPLETED, {"x": 1}) is False
    assert emitter.emit_inference(record()) is False
    assert "llmfn-events-nosink" not in {t.name for t in threading.enumerate()} - before
    assert emitter.flush(0) is True
    assert emitter.close() is True
    assert count(registry, "llmfn_events_dropped_total", reason="queue_full") == 0


def test_flush_deadline_with_hanging_sink(receiver, make_emitter):
    receiver.default = "hang"
    emitter, registry = make_emitter({"K_SINK": receiver.url,
                                      "EVENTS_TIMEOUT_S": str(WAIT_S * 2)})
    assert emitter.emit(INFERENCE_COMPLETED, {"x": 1})
    assert receiver.wait_requests(1)
    assert emitter.flush(0.05) is False
    receiver.release.set()
    assert emitter.flush(WAIT_S) is True
    assert count(registry, "llmfn_events_sent_total") == 1


def test_close_drops_what_is_still_queued(receiver, make_emitter):
    receiver.default = "hang"
    emitter, registry = make_emitter({"K_SINK": receiver.url,
                                      "EVENTS_TIMEOUT_S": str(WAIT_S * 2)})
    assert emitter.emit(INFERENCE_COMPLETED, {"n": 0})
    assert receiver.wait_requests(1)
    assert emitter.emit(INFERENCE_COMPLETED, {"n": 1})
    assert emitter.emit(INFERENCE_COMPLETED, {"n": 2})
    assert emitter.close(timeout_s=0.05) is False
    assert emitter.emit(INFERENCE_COMPLETED, {"n": 3}) is False  # closed: no new events
    assert count(registry, "llmfn_events_dropped_total", reason="shutdown") == 2
    receiver.release.set()  # the in-flight attempt completes, then the thread exits
    emitter._thread.join(WAIT_S)
    assert not emitter._thread.is_alive()
    assert count(registry, "llmfn_events_sent_total") == 1
    assert len(receiver.requests) == 1


def test_close_flushes_before_stopping(receiver, make_emitter):
    emitter, registry = make_emitter({"K_SINK": receiver.url})
    for n in range(5):
        assert emitter.emit(INFERENCE_COMPLETED, {"n": n})
    assert emitter.close(timeout_s=WAIT_S) is True
    assert not emitter._thread.is_alive()
    assert count(registry, "llmfn_events_sent_total") == 5


@pytest.mark.parametrize("include_text", [False, True])
def test_text_only_with_include_text(receiver, make_emitter, include_text):
    emitter, _ = make_emitter({"K_SINK": receiver.url,
                               "EVENTS_INCLUDE_TEXT": str(include_text).lower()})
    assert emitter.emit_inference(record())
    assert emitter.flush(WAIT_S)
    body = json.loads(receiver.requests[0]["body"])
    assert ("prompt" in body, "output" in body) == (include_text, include_text)
    assert receiver.requests[0]["headers"]["ce-subject"] == "smollm2-135m-instruct"


def test_to_data_text_fields():
    assert "prompt" not in record().to_data(False) and "output" not in record().to_data(False)
    data = record().to_data(True)
    assert (data["prompt"], data["output"]) == ("Hi", "Hello!")
    assert "prompt" not in record(prompt=None).to_data(True)


def test_validate_accepts_valid_data_and_extras():
    data = record().to_data(True)
    assert validate_inference_data(data) == []
    data.update(future_field={"anything": 1}, duration_s=1, ttft_s=None, error_code=None)
    assert validate_inference_data(data) == []
    assert validate_inference_data(record(status=400, error_code="bad").to_data(False)) == []


def test_validate_reports_missing_and_wrong_types():
    data = record().to_data(True)
    del data["status"], data["model"]
    data.update(prompt_tokens="12", cold_start=1, input_count=True, duration_s=None,
                ttft_s="0.1", prompt=5, time="yesterday")
    problems = validate_inference_data(data)
    joined = "\n".join(problems)
    for key in ("status is missing", "model is missing", "prompt_tokens must be int",
                "cold_start must be bool", "input_count must be int", "duration_s must be number",
                "ttft_s must be number or null", "prompt must be str", "time must be an RFC 3339"):
        assert key in joined
    assert len(problems) == 9
    assert validate_inference_data([1, 2]) == ["data must be a JSON object, got list"]


def test_validate_accepts_events_from_before_output_format_and_key_id():
    old = record().to_data(False)
    del old["output_format"], old["key_id"]
    assert validate_inference_data(old) == []


def test_api_is_the_routes_unless_given():
    """``api`` defaults to the API of ``endpoint`` (null for another route); a caller that
    serves one API through another's pipeline names it."""
    assert record().api == "chat" and record().to_data(False)["api"] == "chat"
    assert [record(endpoint=e).api for e in ("/v1/completions", "/v1/embeddings",
                                             "/v1/responses", "/v1/messages", "/tokenize")] == \
        ["completions", "embeddings", "responses", "messages", None]
    assert record(endpoint="/v1/messages", api="messages").api == "messages"
    assert record(endpoint="/", api="responses").to_data(False)["api"] == "responses"
    assert api_of(None) is None and api_of(["/v1/completions"]) is None


def test_events_from_before_api_still_load():
    """An event stored before ``api`` existed validates and decodes (``api`` unset); a
    wrong type is named."""
    old = json.loads(GOLDEN.read_text())["data"]
    del old["api"]
    assert validate_inference_data(old) == []
    assert msgspec.convert(old, InferenceData, strict=True).api is msgspec.UNSET
    assert validate_inference_data({**old, "api": None}) == []
    assert validate_inference_data({**old, "api": 3}) == ["api must be str or null, got int"]
