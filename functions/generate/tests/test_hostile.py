"""Hostile input found by hand and by the fuzzer (tests/test_fuzz.py): each a clear 4xx in
OpenAI's shape (or, as a request event, a failed reply), never a 500."""
from __future__ import annotations

import pytest

DEEP = b"[" * 100_000 + b"]" * 100_000  # past the JSON decoder's recursion limit
JSON = {"Content-Type": "application/json"}
CE = {"ce-specversion": "1.0", "ce-id": "h1", "ce-source": "/test",
      "ce-type": "dev.llmfn.chat.completion.requested.v1", "Content-Type": "application/json"}


@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions", "/tokenize",
                                  "/detokenize"])
def test_deeply_nested_json_is_a_400(client, path):
    r = client.post(path, data=DEEP, headers=JSON)
    assert r.status_code == 400, r.get_data(as_text=True)
    assert "nested too deeply" in r.get_json()["error"]["message"]


def test_deeply_nested_request_event_is_a_400(client):
    r = client.post("/", data=DEEP, headers=CE)
    assert r.status_code == 400 and r.get_json()["error"]["code"] == "invalid_event"


@pytest.mark.parametrize("path,raw,param", [
    ("/v1/chat/completions",
     b'{"messages": [{"role": "user", "content": "\\ud800"}], "max_tokens": 2}', "messages"),
    ("/v1/chat/completions",
     b'{"messages": [{"role": "user", "content": [{"type": "text", "text": "x\\udfff"}]}]}',
     "messages"),
    ("/v1/completions", b'{"prompt": "\\ud800", "max_tokens": 2}', "prompt"),
    ("/v1/completions", b'{"prompt": "a", "stop": ["\\ud800"], "max_tokens": 2}', "stop"),
    ("/tokenize", b'{"content": "\\ud800"}', "content"),
])
def test_lone_surrogate_is_a_400_naming_the_param(client, path, raw, param):
    r = client.post(path, data=raw, headers=JSON)
    assert r.status_code == 400, r.get_data(as_text=True)
    err = r.get_json()["error"]
    assert err["param"] == param and "lone surrogate" in err["message"], err


def test_lone_surrogate_request_event_gets_a_failed_reply(client):
    r = client.post("/", data=b'{"messages": [{"role": "user", "content": "\\ud800"}]}',
                    headers=CE)
    assert r.status_code == 200 and r.headers["ce-type"] == "dev.llmfn.request.failed.v1"
    assert r.get_json()["error"]["param"] == "messages"


@pytest.mark.parametrize("prompt", ["", [""]])
def test_empty_prompt_generates_from_bos(client, prompt):
    """As OpenAI does (it starts from <|endoftext|>): one prompt token, the BOS."""
    r = client.post("/v1/completions", json={"prompt": prompt, "max_tokens": 2})
    assert r.status_code == 200, r.get_json()
    assert r.get_json()["usage"]["prompt_tokens"] == 1
