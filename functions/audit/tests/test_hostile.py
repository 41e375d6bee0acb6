"""Hostile input on audit's event routes: a body nested past the JSON decoder's recursion limit
is a 400 `invalid_event` (not retried), never a 500; no database needed to say so."""
from __future__ import annotations

import pytest
from audit_function.func import create_runtime

from llmfn.events import INFERENCE_COMPLETED

DEEP = b'{"a": ' * 50_000 + b"1" + b"}" * 50_000


@pytest.fixture
def client():
    rt = create_runtime({"MONGODB_URI": "mongodb://127.0.0.1:9/", "MONGODB_TIMEOUT_MS": "100",
                         "MAX_REQUEST_BYTES": str(1 << 20), "SHUTDOWN_MIN_S": "0"})
    yield rt.app.test_client()
    rt.stop()


@pytest.mark.parametrize("path", ["/", "/events", "/dead-letter"])
@pytest.mark.parametrize("headers", [
    {"ce-specversion": "1.0", "ce-type": INFERENCE_COMPLETED, "ce-source": "/llmfn/generate",
     "ce-id": "r1", "content-type": "application/json"},
    {"content-type": "application/cloudevents+json"}], ids=["binary", "structured"])
def test_deeply_nested_event_is_a_400(client, path, headers):
    r = client.post(path, data=DEEP, headers=headers)
    assert r.status_code == 400, r.get_data(as_text=True)
    assert r.get_json()["error"]["code"] == "invalid_event"
