import base64
import datetime as dt
import json

import pytest
from audit_function import ingest
from audit_function.store import event_key
from cloudevents.core.v1.event import CloudEvent

from llmfn.ce_http import InvalidEvent
from llmfn.events import INFERENCE_COMPLETED

UTC = dt.UTC


def data(**kw):
    d = {"request_id": "r1", "function": "generate", "model": "m", "model_sha256": "ab" * 32,
         "service": "", "revision": "", "endpoint": "/v1/chat/completions", "status": 200,
         "error_code": None, "prompt_tokens": 3, "completion_tokens": 2, "input_count": 1,
         "ttft_s": 0.1, "duration_s": 0.5, "tokens_per_s": 20.0, "finish_reason": "stop",
         "cold_start": False, "stream": False, "time": "2026-01-02T03:04:05.5Z"}
    d.update(kw)
    return d


def event(d=None, **attrs):
    a = {"type": INFERENCE_COMPLETED, "source": "/llmfn/generate", "id": "r1",
         "datacontenttype": "application/json"}
    a.update(attrs)
    return CloudEvent(a, data() if d is None else d)


def test_validate_known_type_and_data():
    assert ingest.validate(event())["model"] == "m"
    with pytest.raises(InvalidEvent, match="unknown event type"):
        ingest.validate(event(type="dev.llmfn.inference.other.v1"))
    with pytest.raises(InvalidEvent, match="datacontenttype"):
        ingest.validate(event(datacontenttype="text/plain"))
    with pytest.raises(InvalidEvent, match="duration_s"):
        ingest.validate(event(data(duration_s="slow")))
    with pytest.raises(InvalidEvent, match="cannot be stored"):
        ingest.validate(event(data(extra={"$where": 1})))
    assert ingest.validate(event(data(extra_field=[1, {"ok": True}])))["extra_field"]


def test_event_document_identity_time_and_reserved_fields():
    now = dt.datetime(2026, 1, 2, tzinfo=UTC)
    doc = ingest.event_document(event(data(status=500, error="x", _id="evil")), data(status=500,
                                error="x", _id="evil"), now)
    assert doc["_id"] == event_key("/llmfn/generate", "r1") == "/llmfn/generate\x1fr1"
    assert doc["time"] == dt.datetime(2026, 1, 2, 3, 4, 5, 500000, tzinfo=UTC)
    assert doc["error"] == 1 and doc["received_at"] == now
    assert doc["ce"]["type"] == INFERENCE_COMPLETED and doc["model"] == "m"


def test_dead_letter_document_keeps_invalid_events_and_knative_errors():
    now = dt.datetime(2026, 1, 2, tzinfo=UTC)
    ev = event({"$bad": 1}, knativeerrorcode="500", knativeerrordest="http://audit/",
               knativeerrordata=base64.b64encode(b"boom").decode())
    doc = ingest.dead_letter_document(ev, now)
    assert doc["dead_letter"] is True and doc["valid"] is False and doc["problems"]
    assert doc["knativeerrorcode"] == "500" and doc["knativeerrordest"] == "http://audit/"
    assert doc["knativeerrordata_text"] == "boom"
    assert json.loads(doc["data_json"]) == {"$bad": 1} and "data" not in doc
    ok = ingest.dead_letter_document(event(), now)
    assert ok["valid"] is True and ok["data"]["model"] == "m" and ok["knativeerrorcode"] is None
    binary = event(b"\x00\xff", datacontenttype="application/octet-stream")
    raw = ingest.dead_letter_document(binary, now)
    assert base64.b64decode(raw["data_base64"]) == b"\x00\xff"
