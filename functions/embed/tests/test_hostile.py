"""Hostile input found by hand and by the fuzzer (tests/test_fuzz.py): each a clear 4xx in
OpenAI's shape (or, as a request event, a failed reply), never a 500."""
from __future__ import annotations

import pytest

DEEP = b"[" * 100_000 + b"]" * 100_000  # past the JSON decoder's recursion limit
JSON = {"Content-Type": "application/json"}
CE = {"ce-specversion": "1.0", "ce-id": "h1", "ce-source": "/test",
      "ce-type": "dev.llmfn.embeddings.requested.v1", "Content-Type": "application/json"}


@pytest.fixture
def client(make_runtime):
    return make_runtime(MAX_REQUEST_BYTES=str(1 << 20)).app.test_client()


def test_deeply_nested_json_is_a_400(client):
    r = client.post("/v1/embeddings", data=DEEP, headers=JSON)
    assert r.status_code == 400, r.get_data(as_text=True)
    assert "nested too deeply" in r.get_json()["error"]["message"]
    r = client.post("/", data=DEEP, headers=CE)
    assert r.status_code == 400 and r.get_json()["error"]["code"] == "invalid_event"


@pytest.mark.parametrize("raw,param", [
    (b'{"input": "\\ud800"}', "input"),
    (b'{"input": ["fine", "x\\udfff"]}', "input"),
    (b'{"input": "a", "user": "\\udc00"}', "user"),
])
def test_lone_surrogate_is_a_400_naming_the_param(client, raw, param):
    r = client.post("/v1/embeddings", data=raw, headers=JSON)
    assert r.status_code == 400, r.get_data(as_text=True)
    err = r.get_json()["error"]
    assert err["param"] == param and "lone surrogate" in err["message"], err


def test_lone_surrogate_request_event_gets_a_failed_reply(client):
    r = client.post("/", data=b'{"input": "\\ud800"}', headers=CE)
    assert r.status_code == 200 and r.headers["ce-type"] == "dev.llmfn.request.failed.v1"
    assert r.get_json()["error"]["param"] == "input"
