"""Anthropic's Messages API as its official Python client sees it: the `anthropic` SDK against
generate (gunicorn, SmolLM2-135M-Instruct from MinIO, API keys on: the session's
``agents_generate``).

messages.create, messages.stream (text events and the final message), a tool use round trip
(forced with tool_choice "tool": the 135M model would seldom pick a tool by itself; the test
checks the protocol, not the model's judgement), count_tokens, and errors raised as the SDK's
typed exceptions, which it only does for bodies in Anthropic's shape.
"""
from __future__ import annotations

import json

import anthropic
import httpx
import jsonschema
import pytest

from tests.support.agents import AGENTS_KEY as KEY

MODEL = "smollm2-135m-instruct-q4_1"
HELLO = [{"role": "user", "content": "Say hello."}]
WEATHER = {"name": "get_weather", "description": "The weather in a city.",
           "input_schema": {"type": "object", "properties": {
               "city": {"type": "string", "maxLength": 20}}, "required": ["city"]}}


@pytest.fixture(scope="module")
def server(agents_generate):
    return agents_generate


@pytest.fixture(scope="module")
def client(server):
    return anthropic.Anthropic(base_url=server.url, api_key=KEY, max_retries=0, timeout=120)


def test_create(client):
    message = client.messages.create(model=MODEL, max_tokens=5, messages=HELLO,
                                     system=[{"type": "text", "text": "You are terse."}],
                                     metadata={"user_id": "u1"},
                                     extra_body={"temperature": 0, "top_k": 5})
    assert message.type == "message" and message.role == "assistant"
    assert message.model == MODEL and message.id.startswith("msg_")
    assert [b.type for b in message.content] == ["text"] and message.content[0].text
    assert message.stop_reason in ("end_turn", "max_tokens")
    usage = message.usage
    assert usage.output_tokens <= 5 and usage.input_tokens > 5
    assert usage.cache_creation_input_tokens == 0 and usage.cache_read_input_tokens is not None


def test_stop_reason_max_tokens(client):
    message = client.messages.create(model=MODEL, max_tokens=1, messages=[
        {"role": "user", "content": "Write a long story about a dragon."}])
    assert message.stop_reason == "max_tokens" and message.usage.output_tokens == 1


def test_stop_sequence(client):
    """A stop sequence of the request that ended the answer is named (a space: any answer of
    more than one word has one)."""
    asked = dict(model=MODEL, max_tokens=12, stop_sequences=[" ", "zzzz"], messages=[
        {"role": "user", "content": "Tell me about the sea."}])
    message = client.messages.create(**asked)
    assert message.stop_reason == "stop_sequence" and message.stop_sequence == " "
    assert " " not in message.content[0].text
    with client.messages.stream(**asked) as stream:
        final = stream.get_final_message()
    assert final.stop_reason == "stop_sequence" and final.stop_sequence == " "


def test_stream(client):
    with client.messages.stream(model=MODEL, max_tokens=6, messages=HELLO) as stream:
        deltas = list(stream.text_stream)
        final = stream.get_final_message()
    text = "".join(deltas)
    assert text and [b.type for b in final.content] == ["text"]
    assert final.content[0].text == text
    assert final.stop_reason in ("end_turn", "max_tokens")
    assert 1 <= final.usage.output_tokens <= 6
    assert final.usage.input_tokens + final.usage.cache_read_input_tokens > 5


def test_raw_stream_events(server):
    """The wire format: `event:` lines naming each event's type, a ping after the first block
    starts, message_delta with the stop reason and usage."""
    with httpx.stream("POST", f"{server.url}/v1/messages", headers={
            "x-api-key": KEY, "anthropic-version": "2023-06-01"}, json={
            "model": MODEL, "max_tokens": 3, "messages": HELLO, "stream": True},
            timeout=120) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith(
            "text/event-stream")
        lines = [line for line in r.iter_lines() if line]
    names = [line.removeprefix("event: ") for line in lines if line.startswith("event: ")]
    datas = [json.loads(line.removeprefix("data: ")) for line in lines
             if line.startswith("data: ")]
    assert names == [d["type"] for d in datas]
    assert names[:4] == ["message_start", "content_block_start", "ping", "content_block_delta"]
    assert names[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    delta = datas[-2]
    assert delta["delta"]["stop_reason"] == "max_tokens" and delta["usage"]["output_tokens"] == 3
    prompt = delta["usage"]["input_tokens"] + delta["usage"]["cache_read_input_tokens"]
    assert datas[0]["message"]["usage"]["input_tokens"] == prompt > 5


def test_tool_use_round_trip(client):
    tools = [WEATHER]
    asked = [{"role": "user", "content": "What is the weather in Paris?"}]
    first = client.messages.create(model=MODEL, max_tokens=60, messages=asked, tools=tools,
                                   tool_choice={"type": "tool", "name": "get_weather"},
                                   extra_body={"temperature": 0})
    assert first.stop_reason == "tool_use"
    uses = [b for b in first.content if b.type == "tool_use"]
    assert len(uses) == 1 and uses[0].name == "get_weather"
    assert uses[0].id.startswith("toolu_") and isinstance(uses[0].input.get("city"), str)
    answer = client.messages.create(model=MODEL, max_tokens=20, tools=tools,
                                    messages=asked + [
        {"role": "assistant", "content": first.content},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": uses[0].id,
                                      "content": "18 degrees and sunny"}]}])
    assert answer.stop_reason in ("end_turn", "max_tokens", "tool_use")
    assert answer.content

    def prompt(usage):  # Anthropic counts cache reads apart from input_tokens
        return usage.input_tokens + usage.cache_read_input_tokens

    assert prompt(answer.usage) > prompt(first.usage)
    assert answer.usage.cache_read_input_tokens > 0  # the turn before's prefix, reused


def test_streamed_tool_use(client):
    with client.messages.stream(model=MODEL, max_tokens=60, messages=[
            {"role": "user", "content": "Weather in Rome?"}], tools=[WEATHER],
            tool_choice={"type": "any"}) as stream:
        final = stream.get_final_message()
    assert final.stop_reason == "tool_use"
    use = final.content[-1]
    assert use.type == "tool_use" and use.name == "get_weather" and "city" in use.input


def test_structured_output(client):
    """output_config.format: JSON valid against the schema (chat's json_schema engine)."""
    schema = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 12}},
              "required": ["city"], "additionalProperties": False}
    message = client.messages.create(model=MODEL, max_tokens=40, messages=[
        {"role": "user", "content": "Name a city in Japan as JSON."}],
        output_config={"format": {"type": "json_schema", "schema": schema}})
    assert message.stop_reason == "end_turn"
    jsonschema.validate(json.loads(message.content[0].text), schema)


def test_count_tokens(client):
    counted = client.messages.count_tokens(model=MODEL, messages=HELLO)
    created = client.messages.create(model=MODEL, max_tokens=1, messages=HELLO)
    usage = created.usage
    assert counted.input_tokens == usage.input_tokens + usage.cache_read_input_tokens
    with_tools = client.messages.count_tokens(model=MODEL, messages=HELLO, tools=[WEATHER])
    assert with_tools.input_tokens > counted.input_tokens  # the tools' system text


def test_errors_are_typed(server, client):
    bad_key = anthropic.Anthropic(base_url=server.url, api_key="wrong", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError) as err:
        bad_key.messages.create(model=MODEL, max_tokens=1, messages=HELLO)
    assert err.value.status_code == 401 and err.value.body["error"]["type"] == \
        "authentication_error"
    with pytest.raises(anthropic.BadRequestError) as err:
        client.messages.create(model=MODEL, max_tokens=1, messages=[{"role": "user", "content": [
            {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                         "data": "iVBORw0KGgo="}}]}])
    assert "messages[0].content[0]" in err.value.message and "'image'" in err.value.message
    assert err.value.body["type"] == "error"
    with pytest.raises(anthropic.BadRequestError, match="max_tokens"):
        client.messages.create(model=MODEL, max_tokens=0, messages=HELLO)
    with pytest.raises(anthropic.BadRequestError, match="thinking"):
        client.messages.create(model=MODEL, max_tokens=1, messages=HELLO,
                               thinking={"type": "enabled", "budget_tokens": 1024})
    with pytest.raises(anthropic.NotFoundError):
        client.messages.create(model="claude-sonnet-4-5", max_tokens=1, messages=HELLO)
    with pytest.raises(anthropic.BadRequestError, match="tool_choice"):
        client.messages.count_tokens(model=MODEL, messages=HELLO, tools=[WEATHER],
                                     tool_choice={"type": "tool", "name": "nope"})


@pytest.mark.parametrize(("headers", "status", "kind"), [
    ({"Content-Type": "text/plain"}, 415, "invalid_request_error"),
    ({"x-api-key": ""}, 401, "authentication_error"),
])
def test_shared_errors_in_anthropic_shape(server, headers, status, kind):
    r = httpx.post(f"{server.url}/v1/messages", content=b"{}",
                   headers={"x-api-key": KEY, "Content-Type": "application/json", **headers})
    assert r.status_code == status
    assert r.json() == {"type": "error", "error": {"type": kind, "message": r.json()[
        "error"]["message"]}}
    openai_route = httpx.post(f"{server.url}/v1/chat/completions", content=b"{}",
                              headers={"x-api-key": KEY, "Content-Type": "application/json",
                                       **headers})
    assert openai_route.status_code == status and "type" not in openai_route.json()
