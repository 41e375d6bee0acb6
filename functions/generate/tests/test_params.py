"""OpenAI parameters beyond the basics, on the real tiny model: logprobs (against a separate
evaluation path), n, best_of, echo, penalties, logit_bias, structured outputs, tools, the
tokenizer routes, and the parameter table's 400s."""
from __future__ import annotations

import json

import numpy as np
import pytest

from function import schema
from function.scheduler import log_softmax
from scripts.kernel_noise import TINY_LOGIT_TOLERANCE, Evaluator, KernelPath

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
HI = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def evaluator(tiny_model):
    ev = Evaluator(tiny_model, n_ctx=256)
    yield ev
    ev.close()


def sse(resp) -> list[dict]:
    lines = resp.get_data(as_text=True).split("\n\n")
    return [json.loads(x[6:]) for x in lines if x.startswith("data: {")]


def test_completion_logprobs_are_the_models_log_softmax(client, evaluator):
    """Against logits from llama-cpp-python's own evaluation (scripts/kernel_noise)."""
    r = client.post(COMPLETIONS, json={"prompt": "ok", "max_tokens": 4, "temperature": 0,
                                       "logprobs": 3}).get_json()
    lp = r["choices"][0]["logprobs"]
    assert len(lp["tokens"]) == len(lp["token_logprobs"]) == len(lp["top_logprobs"]) == 4
    assert "".join(lp["tokens"]) == r["choices"][0]["text"]
    assert lp["text_offset"] == [0, 1, 2, 3]
    prompt = evaluator.tokenize_prompt("ok")
    answer = evaluator.greedy(prompt, 4, fa=True)
    rows = evaluator.logits(prompt + answer, KernelPath("prefill", True), n_last=5)[:4]
    for i, (row, tok) in enumerate(zip(rows, answer)):
        x = row.astype(np.float64) - row.max()
        want = x - np.log(np.exp(x).sum())
        assert abs(lp["token_logprobs"][i] - want[tok]) < TINY_LOGIT_TOLERANCE
        top = sorted(lp["top_logprobs"][i].values(), reverse=True)
        assert len(top) <= 3 and abs(top[0] - want.max()) < TINY_LOGIT_TOLERANCE


def test_log_softmax_sums_to_one():
    row = log_softmax(np.array([1.0, 2.0, 3.0, -50.0], dtype=np.float32))
    assert np.isclose(np.exp(row).sum(), 1.0) and row.argmax() == 2


def test_chat_logprobs_streamed_and_not_agree(client):
    body = {"messages": HI, "max_tokens": 3, "temperature": 0, "logprobs": True,
            "top_logprobs": 2}
    whole = client.post(CHAT, json=body).get_json()["choices"][0]["logprobs"]["content"]
    chunks = sse(client.post(CHAT, json={**body, "stream": True}))
    streamed = [e for c in chunks for ch in c["choices"] if ch["logprobs"]
                for e in ch["logprobs"]["content"]]
    assert [e["token"] for e in streamed] == [e["token"] for e in whole]
    for a, b in zip(streamed, whole):
        assert abs(a["logprob"] - b["logprob"]) < TINY_LOGIT_TOLERANCE
        assert len(a["top_logprobs"]) == 2 and a["bytes"] == list(a["token"].encode())
    assert client.post(CHAT, json={"messages": HI, "top_logprobs": 2}).status_code == 400


def test_n_choices_run_as_slots_and_usage_counts_each(client):
    r = client.post(COMPLETIONS, json={"prompt": "ok", "max_tokens": 3, "n": 3,
                                       "temperature": 1.0, "seed": 7}).get_json()
    assert [c["index"] for c in r["choices"]] == [0, 1, 2]
    assert r["usage"]["completion_tokens"] == 9
    chunks = sse(client.post(CHAT, json={"messages": HI, "max_tokens": 2, "n": 2,
                                         "stream": True, "temperature": 0.7}))
    finished = {ch["index"] for c in chunks for ch in c["choices"] if ch["finish_reason"]}
    assert finished == {0, 1}
    r = client.post(COMPLETIONS, json={"prompt": "ok", "n": 99})
    assert r.status_code == 400 and r.get_json()["error"]["param"] == "n"


def test_best_of_returns_the_best_candidates_and_bills_all(client):
    r = client.post(COMPLETIONS, json={"prompt": "ok", "max_tokens": 3, "best_of": 3,
                                       "temperature": 1.0, "seed": 1}).get_json()
    assert len(r["choices"]) == 1 and r["choices"][0]["logprobs"] is None
    assert r["usage"]["completion_tokens"] == 9


def test_echo_puts_the_prompt_before_the_text(client):
    r = client.post(COMPLETIONS, json={"prompt": "ok", "max_tokens": 2, "temperature": 0,
                                       "echo": True}).get_json()
    assert r["choices"][0]["text"].startswith("ok") and len(r["choices"][0]["text"]) == 4


def test_penalties_and_logit_bias_change_the_greedy_answer(client):
    base = {"prompt": "ok", "max_tokens": 8, "temperature": 0}
    plain = client.post(COMPLETIONS, json=base).get_json()["choices"][0]["text"]
    assert len(set(plain)) <= 2  # the tiny model repeats itself
    varied = client.post(COMPLETIONS, json={**base, "frequency_penalty": 2.0}).get_json()
    assert len(set(varied["choices"][0]["text"])) > len(set(plain))
    present = client.post(COMPLETIONS, json={**base, "presence_penalty": 2.0}).get_json()
    assert present["choices"][0]["text"] != plain
    # the tiny model's byte b is token 5 + b: bias "A" (65) to the top
    biased = client.post(COMPLETIONS, json={**base, "logit_bias": {"70": 100}}).get_json()
    assert biased["choices"][0]["text"] == "A" * 8


def test_json_object_output_parses_when_it_stops(client):
    r = client.post(CHAT, json={"messages": HI, "max_tokens": 64, "temperature": 0,
                                "response_format": {"type": "json_object"},
                                "logit_bias": {str(5 + ord('"')): 30}}).get_json()
    choice = r["choices"][0]
    text = choice["message"]["content"]
    assert text.startswith("{")
    if choice["finish_reason"] == "stop":
        assert isinstance(json.loads(text), dict)


def test_forced_tool_call_is_a_valid_call(make_runtime):
    """The tools go into the system message (the tiny model's bytes make it long)."""
    client = make_runtime(N_CTX=1024).app.test_client()
    tools = [{"type": "function", "function": {
        "name": "pick", "parameters": {"type": "object", "properties": {
            "color": {"enum": ["red", "blue"]}}, "required": ["color"],
            "additionalProperties": False}}}]
    r = client.post(CHAT, json={"messages": HI, "max_tokens": 80, "temperature": 0,
                                "tools": tools, "tool_choice": "required"}).get_json()
    choice = r["choices"][0]
    assert choice["finish_reason"] == "tool_calls", choice  # enums bound every character
    call = choice["message"]["tool_calls"][0]
    assert call["type"] == "function" and call["function"]["name"] == "pick"
    assert json.loads(call["function"]["arguments"])["color"] in ("red", "blue")
    assert choice["message"]["content"] is None
    chunks = sse(client.post(CHAT, json={"messages": HI, "max_tokens": 80, "temperature": 0,
                                         "tools": tools, "tool_choice": "required",
                                         "stream": True}))
    deltas = [ch["delta"] for c in chunks for ch in c["choices"] if "tool_calls" in ch["delta"]]
    assert deltas[0]["tool_calls"][0]["function"] == call["function"]
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"
    convo = HI + [{"role": "assistant", "content": None, "tool_calls": [call]},
                  {"role": "tool", "tool_call_id": call["id"], "content": "ok"}]
    assert client.post(CHAT, json={"messages": convo, "max_tokens": 2}).status_code == 200


@pytest.mark.parametrize("body,param", [
    ({"response_format": {"type": "xml"}}, "response_format"),
    ({"response_format": {"type": "json_schema", "json_schema": {
        "name": "x", "schema": {"type": "object", "not": {"type": "string"}}}}},
     "response_format"),
    ({"response_format": {"type": "json_schema", "json_schema": {
        "name": "x", "schema": {"type": "string", "format": "idn-email"}}}}, "response_format"),
    ({"tools": [{"type": "function"}]}, "tools[0]"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0].tool_call_id"),
    ({"response_format": {"type": "json_object"}, "stop": ["}"]}, "stop"),
    ({"functions": [{"name": "f"}]}, "functions"),
    ({"reasoning_effort": "low"}, "reasoning_effort"),
    ({"audio": {"voice": "x"}}, "audio"),
    ({"modalities": ["text", "audio"]}, "modalities"),
    ({"frobnicate": 1}, "frobnicate"),
])
def test_chat_parameters_we_cannot_honour_are_400_naming_them(client, body, param):
    r = client.post(CHAT, json={"messages": HI, **body})
    assert r.status_code == 400, r.get_json()
    assert r.get_json()["error"]["param"] == param


@pytest.mark.parametrize("path,body,param", [
    (CHAT, {"messages": HI, "stop": ["a", 1]}, "stop"),
    (CHAT, {"messages": HI, "logit_bias": {"5": "x"}}, "logit_bias"),
    (CHAT, {"messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]},
     "messages[0].content"),
    (CHAT, {"messages": [{"role": "assistant", "tool_calls": [{"id": "c", "function": {
        "name": "f", "arguments": 5}}]}]}, "messages[0].tool_calls[0]"),
    (CHAT, {"messages": HI, "tools": [{"type": "function", "function": {"name": 5}}]},
     "tools[0]"),
    (CHAT, {"messages": HI, "tools": [{"type": "function", "function": {
        "name": "f", "parameters": []}}]}, "tools[0]"),
    (CHAT, {"messages": HI, "tool_choice": {"type": "function", "function": {"name": 5}}},
     "tool_choice"),
    (CHAT, {"messages": HI, "response_format": {"type": "json_schema", "json_schema": {
        "name": "x", "schema": 5}}}, "response_format"),
    (CHAT, {"messages": HI, "modalities": ["audio"]}, "modalities"),
    (CHAT, {"messages": HI, "stream": True, "stream_options": {"include_usage": 1}},
     "include_usage"),
    (COMPLETIONS, {"prompt": [1, "a"]}, "prompt"),
    ("/detokenize", {"tokens": [1, -1]}, "tokens"),
])
def test_a_fault_inside_a_parameter_names_it_as_before(client, path, body, param):
    """The types name the exact place (``tools[0].function.name``); the 400s keep the param
    they always had (the parameter, or the message or tool)."""
    r = client.post(path, json=body)
    assert r.status_code == 400, r.get_json()
    assert r.get_json()["error"]["param"] == param


def test_no_effect_parameters_are_accepted(client):
    r = client.post(CHAT, json={"messages": HI, "max_tokens": 1, "user": "u", "store": False,
                                "metadata": {"k": "v"}, "service_tier": "auto",
                                "parallel_tool_calls": True, "modalities": ["text"]})
    assert r.status_code == 200


def test_every_parameter_has_a_status():
    for table in (schema.CHAT_PARAMETERS, schema.COMPLETION_PARAMETERS):
        assert set(table.values()) <= {"implemented", "ignored", "rejected"}
        assert all(k in schema.REJECTED_WHY for k, v in table.items() if v == "rejected")


def test_tokenize_and_detokenize_round_trip(client):
    r = client.post("/tokenize", json={"content": "hello"}).get_json()
    assert r["tokens"] == [5 + b for b in b"hello"]
    assert client.post("/detokenize", json={"tokens": r["tokens"]}).get_json() == {
        "content": "hello"}
    pieces = client.post("/tokenize", json={"content": "hi", "with_pieces": True}).get_json()
    assert pieces["tokens"] == [{"id": 109, "piece": "h"}, {"id": 110, "piece": "i"}]
    assert client.post("/detokenize", json={"tokens": [10 ** 9]}).status_code == 400
