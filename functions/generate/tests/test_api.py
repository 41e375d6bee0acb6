"""The OpenAI-compatible API on the real tiny model: answers, parameters, errors, limits."""
from __future__ import annotations

import json
import threading

import pytest

from function.engine import Params
from function.scheduler import Generation

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"


def error_of(resp):
    body = resp.get_json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


def test_completion_counts_tokens_as_produced(client):
    r = client.post(COMPLETIONS, json={"prompt": "hello", "max_tokens": 7, "temperature": 0})
    assert r.status_code == 200
    body = r.get_json()
    assert body["object"] == "text_completion" and body["id"].startswith("cmpl-")
    assert body["usage"]["completion_tokens"] == 7
    assert body["usage"]["prompt_tokens"] > 0
    assert body["usage"]["total_tokens"] == 7 + body["usage"]["prompt_tokens"]
    assert body["choices"][0]["finish_reason"] == "length"
    assert len(body["choices"][0]["text"]) > 0
    assert r.headers["X-Request-Id"] in body["id"]


def test_chat_uses_template_and_is_deterministic_with_temperature_0(client):
    req = {"messages": [{"role": "system", "content": "be brief"},
                        {"role": "user", "content": "hi"}], "max_tokens": 5, "temperature": 0}
    a = client.post(CHAT, json=req).get_json()
    b = client.post(CHAT, json=req).get_json()
    assert a["object"] == "chat.completion"
    assert a["choices"][0]["message"]["role"] == "assistant"
    assert a["choices"][0]["message"]["content"] == b["choices"][0]["message"]["content"]
    assert a["usage"]["completion_tokens"] == 5


def test_seed_makes_sampling_repeatable(client):
    req = {"prompt": "abc", "max_tokens": 12, "temperature": 1.5, "seed": 42}
    first = client.post(COMPLETIONS, json=req).get_json()["choices"][0]["text"]
    again = client.post(COMPLETIONS, json=req).get_json()["choices"][0]["text"]
    assert first == again


def test_stop_string_ends_generation(client):
    greedy = client.post(COMPLETIONS, json={"prompt": "x", "max_tokens": 20,
                                            "temperature": 0}).get_json()
    text = greedy["choices"][0]["text"]
    stop = text[3:5]
    r = client.post(COMPLETIONS, json={"prompt": "x", "max_tokens": 20, "temperature": 0,
                                       "stop": [stop]}).get_json()
    assert r["choices"][0]["finish_reason"] == "stop"
    assert r["choices"][0]["text"] == text[:text.index(stop)]
    assert stop not in r["choices"][0]["text"]


def test_token_id_prompt_and_unknown_fields_are_400_naming_them(client):
    r = client.post(COMPLETIONS, json={"prompt": [5, 6, 7], "max_tokens": 2, "user": "u1"})
    assert r.status_code == 200
    assert r.get_json()["usage"]["prompt_tokens"] == 3
    r = client.post(COMPLETIONS, json={"prompt": "x", "frobnicate": {"x": 1}})
    assert r.status_code == 400 and error_of(r)["param"] == "frobnicate"
    assert "Unrecognized request argument" in error_of(r)["message"]


@pytest.mark.parametrize("body,param", [
    ({"prompt": "x", "max_tokens": "5"}, "max_tokens"),
    ({"prompt": "x", "max_tokens": 0}, "max_tokens"),
    ({"prompt": "x", "temperature": "hot"}, "temperature"),
    ({"prompt": "x", "temperature": 3}, "temperature"),
    ({"prompt": "x", "top_p": []}, "top_p"),
    ({"prompt": "x", "stop": 5}, "stop"),
    ({"prompt": "x", "stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"prompt": "x", "seed": 1.5}, "seed"),
    ({"prompt": "x", "stream": "yes"}, "stream"),
    ({"prompt": "x", "stream_options": {"include_usage": True}}, "stream_options"),
    ({"prompt": "x", "n": 0}, "n"),
    ({"prompt": "x", "n": 99}, "n"),
    ({"prompt": "x", "suffix": "end"}, "suffix"),
    ({"prompt": "x", "best_of": 1, "n": 2}, "best_of"),
    ({"prompt": "x", "echo": True, "logprobs": 1}, "echo"),
    ({"prompt": "x", "logprobs": 6}, "logprobs"),
    ({"prompt": "x", "presence_penalty": 3}, "presence_penalty"),
    ({"prompt": "x", "frequency_penalty": "x"}, "frequency_penalty"),
    ({"prompt": "x", "logit_bias": {"abc": 1}}, "logit_bias"),
    ({"prompt": "x", "logit_bias": {"5": 101}}, "logit_bias"),
    ({"prompt": "x", "logit_bias": {"999999": 1}}, "logit_bias"),
    ({"prompt": 12}, "prompt"),
    ({"prompt": ["a", "b"]}, "prompt"),
    ({}, "prompt"),
    ({"prompt": "x", "model": 7}, "model"),
])
def test_wrong_types_are_400_naming_the_param(client, body, param):
    r = client.post(COMPLETIONS, json=body)
    assert r.status_code == 400
    err = error_of(r)
    assert err["param"] == param
    assert err["type"] == "invalid_request_error"


@pytest.mark.parametrize("messages,param", [
    ("hi", "messages"), ([], "messages"), (["hi"], "messages[0]"),
    ([{"role": "wizard", "content": "x"}], "messages[0].role"),
    ([{"role": "user", "content": 5}], "messages[0].content"),
    ([{"role": "user", "content": [{"type": "image_url"}]}], "messages[0].content"),
])
def test_bad_messages(client, messages, param):
    r = client.post(CHAT, json={"messages": messages})
    assert r.status_code == 400
    assert error_of(r)["param"] == param


def test_text_parts_are_accepted(client):
    r = client.post(CHAT, json={"messages": [{"role": "user", "content": [
        {"type": "text", "text": "hel"}, {"type": "text", "text": "lo"}]}], "max_tokens": 1})
    assert r.status_code == 200


def test_invalid_json_is_400(client):
    r = client.post(COMPLETIONS, data=b"{not json", content_type="application/json")
    assert r.status_code == 400
    assert "JSON" in error_of(r)["message"]


def test_json_array_body_is_400(client):
    r = client.post(COMPLETIONS, data=b"[1,2]", content_type="application/json")
    assert r.status_code == 400


def test_wrong_content_type_is_415(client):
    r = client.post(COMPLETIONS, data=b"prompt=x", content_type="application/x-www-form-urlencoded")
    assert r.status_code == 415
    assert error_of(r)["code"] == "unsupported_media_type"


def test_prompt_over_context_is_context_length_exceeded(client):
    r = client.post(COMPLETIONS, json={"prompt": "y" * 400})
    assert r.status_code == 400
    err = error_of(r)
    assert err["code"] == "context_length_exceeded" and err["param"] == "prompt"
    assert "256" in err["message"]


def test_prompt_plus_max_tokens_over_context(client):
    r = client.post(COMPLETIONS, json={"prompt": "y" * 200, "max_tokens": 100})
    assert r.status_code == 400
    assert error_of(r)["code"] == "context_length_exceeded"


def test_default_max_tokens_is_clamped_to_room_left(client):
    r = client.post(COMPLETIONS, json={"prompt": "y" * 250, "temperature": 0})
    assert r.status_code == 200
    usage = r.get_json()["usage"]
    assert usage["prompt_tokens"] + usage["completion_tokens"] <= 256


def test_body_over_limit_is_413(make_runtime):
    client = make_runtime(MAX_REQUEST_BYTES=1000).app.test_client()
    r = client.post(COMPLETIONS, json={"prompt": "z" * 2000})
    assert r.status_code == 413
    assert error_of(r)["code"] == "request_too_large"


def test_unknown_model_is_404(client):
    r = client.post(CHAT, json={"model": "gpt-9", "messages": [{"role": "user", "content": "x"}]})
    assert r.status_code == 404
    assert error_of(r)["code"] == "model_not_found"


def test_unknown_route_is_404_in_openai_shape(client):
    r = client.get("/v1/nothing")
    assert r.status_code == 404
    error_of(r)


def test_models_lists_the_served_model(client, runtime):
    body = client.get("/v1/models").get_json()
    assert body["object"] == "list"
    assert [m["id"] for m in body["data"]] == ["tiny-llama"]
    assert client.get("/v1/models/tiny-llama").status_code == 200
    assert client.get("/v1/models/other").status_code == 404


def test_not_ready_is_503_with_retry_after(make_runtime, tmp_path):
    rt = make_runtime(wait=False, MODEL_URI=f"file://{tmp_path}/missing.gguf", RETRY_AFTER_S=7)
    rt.host.wait(30)
    c = rt.app.test_client()
    r = c.post(COMPLETIONS, json={"prompt": "x"})
    assert r.status_code == 503
    assert r.headers["Retry-After"] == "7"
    assert error_of(r)["code"] == "model_not_ready"
    assert c.get("/health/readiness").status_code == 503
    assert c.get("/health/liveness").status_code == 503  # failed for good: restart the pod


def test_queue_full_is_429_with_retry_after(make_runtime, hold_first_step):
    """SLOTS=1, QUEUE_SIZE=1: with the scheduler held before its first step, one request takes
    the slot, one waits; the next gets 429."""
    rt = make_runtime(SLOTS=1, QUEUE_SIZE=1, RETRY_AFTER_S=3)
    scheduler, release = rt.service, threading.Event()
    hold_first_step(scheduler, release)
    engine = rt.host.model
    held = [scheduler.submit(Generation(engine.tokenize_prompt("x"), Params(max_tokens=1)))
            for _ in range(2)]
    try:
        r = rt.app.test_client().post(COMPLETIONS, json={"prompt": "x", "max_tokens": 1})
        assert r.status_code == 429
        assert r.headers["Retry-After"] == "3"
        assert error_of(r)["code"] == "queue_full"
    finally:
        release.set()
        for gen in held:
            assert gen.wait(30).completion_tokens == 1


def test_metrics_count_requests_and_tokens(client):
    client.post(COMPLETIONS, json={"prompt": "hello", "max_tokens": 4})
    client.post(COMPLETIONS, json={"prompt": 1})
    text = client.get("/metrics").get_data(as_text=True)
    assert 'llmfn_requests_total{route="/v1/completions",status="200"} 1.0' in text
    assert 'llmfn_requests_total{route="/v1/completions",status="400"} 1.0' in text
    assert 'llmfn_completion_tokens_total{model="tiny-llama"} 4.0' in text
    assert "llmfn_time_to_first_token_seconds_count" in text
    assert 'llmfn_cold_start_seconds{phase="load"}' in text
    assert "llmfn_queue_depth 0.0" in text


def test_errors_never_leak_exception_text(client, runtime, monkeypatch):
    engine = runtime.host.model

    def boom(*a, **k):
        raise RuntimeError("secret internal detail /etc/passwd")

    monkeypatch.setattr(engine, "piece", boom)
    r = client.post(COMPLETIONS, json={"prompt": "x", "max_tokens": 2})
    assert r.status_code == 500
    assert "secret" not in json.dumps(r.get_json())
    assert error_of(r)["type"] == "server_error"


def test_auth_when_keys_are_set(make_runtime, tmp_path):
    keyfile = tmp_path / "keys"
    keyfile.write_text("from-secret\n")
    c = make_runtime(API_KEYS="k1", API_KEYS_FILE=str(keyfile)).app.test_client()
    req = {"prompt": "x", "max_tokens": 1}
    r = c.post(COMPLETIONS, json=req)
    assert r.status_code == 401
    assert error_of(r)["type"] == "authentication_error"
    wrong = {"Authorization": "Bearer nope"}
    assert c.post(COMPLETIONS, json=req, headers=wrong).status_code == 401
    assert c.get("/v1/models").status_code == 401
    for key in ("k1", "from-secret"):
        r = c.post(COMPLETIONS, json=req, headers={"Authorization": f"Bearer {key}"})
        assert r.status_code == 200
    # probes and the Prometheus scrape stay open
    assert c.get("/health/readiness").status_code == 200
    assert c.get("/health/liveness").status_code == 200
    assert c.get("/metrics").status_code == 200


def test_empty_prompt_generates_from_bos(client, runtime):
    """An empty prompt starts from the BOS token, as OpenAI starts from <|endoftext|>."""
    r = client.post(COMPLETIONS, json={"prompt": "", "max_tokens": 2, "temperature": 0})
    assert r.status_code == 200, r.get_json()
    assert r.get_json()["usage"] == {"prompt_tokens": 1, "completion_tokens": 2,
                                     "total_tokens": 3}
