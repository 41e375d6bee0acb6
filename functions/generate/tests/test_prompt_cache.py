"""On SmolLM2-135M-Instruct (in process): usage's ``prompt_tokens_details.cached_tokens`` counts
the prompt tokens the scheduler kept in a slot's KV instead of computing them again, and
``ignore_eos`` (llama-server's, vLLM's) generates past the end-of-turn token to ``max_tokens``.
"""
from __future__ import annotations

import json

import pytest

from function.func import create_runtime
from scripts.model_files import smollm2_path
from tests.support.runtimes import RuntimeFactory

CHAT = "/v1/chat/completions"
SYSTEM = ("You are the help desk of a small bakery in Lyon. You answer questions about opening "
          "hours, bread, cakes, prices and orders. Keep every answer short and friendly, use "
          "plain words, never invent prices you were not given, and when a customer asks for "
          "something the bakery does not sell, say so and suggest the closest thing it has. "
          "The bakery opens at seven and closes at seven, Tuesday to Sunday; on Monday it is "
          "closed. Orders for birthday cakes need two days' notice, and bread can be set aside "
          "by phone until noon.")


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    factory = RuntimeFactory(create_runtime, {
        "MODEL_URI": f"file://{smollm2_path()}",
        "MODEL_CACHE_DIR": str(tmp_path_factory.mktemp("smol") / "cache"),
        "N_CTX": "512", "N_THREADS": "2", "SLOTS": "2", "SHUTDOWN_GRACE_S": "5",
        "EVENTS_FLUSH_S": "2"})
    yield factory().app.test_client()
    factory.stop_all()


def ask(client, question: str, **extra) -> dict:
    return client.post(CHAT, json={"messages": [{"role": "system", "content": SYSTEM},
                                                {"role": "user", "content": question}],
                                   "max_tokens": 2, "temperature": 0, **extra})


def test_a_shared_system_prompt_is_reported_cached(client):
    """The first request finds nothing cached; a second one with the same 100+-token system
    prompt and another question has at least 60 % of the system prompt's tokens cached (the
    template's head, the system prompt, the user turn's head: the common prefix), in the
    stream's usage chunk as in JSON."""
    system_tokens = len(client.post("/tokenize", json={"content": SYSTEM}).get_json()["tokens"])
    assert system_tokens >= 100
    first = ask(client, "When do you open on Sunday?").get_json()["usage"]
    assert first["prompt_tokens_details"] == {"cached_tokens": 0}
    r = ask(client, "Do you sell croissants?", stream=True,
            stream_options={"include_usage": True})
    chunks = [json.loads(b[len("data: "):]) for b in r.get_data(as_text=True).split("\n\n")
              if b.startswith("data: {")]
    usage = chunks[-1]["usage"]
    cached = usage["prompt_tokens_details"]["cached_tokens"]
    assert 0.6 * system_tokens <= cached < usage["prompt_tokens"]
    again = ask(client, "Do you sell croissants?").get_json()["usage"]
    # the same prompt: all but the one token redone for its logits
    assert again["prompt_tokens_details"]["cached_tokens"] == again["prompt_tokens"] - 1
    print(f"system prompt {system_tokens} tokens; second request {cached} of "
          f"{usage['prompt_tokens']} prompt tokens cached "
          f"({cached / system_tokens:.0%} of the system prompt)")


def test_ignore_eos_generates_to_max_tokens(client):
    """A greeting SmolLM2 ends well before 40 tokens (24 here: its end-of-turn token) runs to
    ``max_tokens`` with ``ignore_eos``, on both endpoints; a stop string (a space, in any
English answer) still ends it."""
    body = {"messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 40,
            "temperature": 0}
    short = client.post(CHAT, json=body).get_json()
    assert short["choices"][0]["finish_reason"] == "stop"
    assert short["usage"]["completion_tokens"] < 40
    full = client.post(CHAT, json={**body, "ignore_eos": True}).get_json()
    assert (full["choices"][0]["finish_reason"], full["usage"]["completion_tokens"]) == \
        ("length", 40)
    print(f"'Say hello.': {short['usage']['completion_tokens']} tokens, stop; with ignore_eos "
          f"{full['usage']['completion_tokens']}, length")
    prompt = {"prompt": "The capital of France is", "max_tokens": 16, "temperature": 0,
              "ignore_eos": True}
    done = client.post("/v1/completions", json=prompt).get_json()
    assert (done["choices"][0]["finish_reason"], done["usage"]["completion_tokens"]) == \
        ("length", 16)
    cut = client.post("/v1/completions", json={**prompt, "stop": [" "]}).get_json()
    assert cut["choices"][0]["finish_reason"] == "stop"
    assert cut["usage"]["completion_tokens"] < 16


def test_ignore_eos_with_a_schema_is_a_400_naming_it(client):
    for extra in ({"response_format": {"type": "json_object"}}, {"ignore_eos": "yes"}):
        r = client.post(CHAT, json={"messages": [{"role": "user", "content": "hi"}],
                                    "ignore_eos": True, **extra})
        assert r.status_code == 400, r.get_json()
        assert r.get_json()["error"]["param"] == "ignore_eos"
