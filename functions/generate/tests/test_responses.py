"""/v1/responses on the tiny model: the answer and its events, the translation of items, and
every 400 naming the Responses parameter or item (OpenAI's error shape)."""
from __future__ import annotations

import json

import pytest

from function import responses
from function import responses_protocol as rp
from llmfn.protocol import decode


@pytest.fixture(scope="module")
def client(tiny_model, tmp_path_factory):
    from function.func import create_runtime
    from tests.support.runtimes import RuntimeFactory
    factory = RuntimeFactory(create_runtime, {
        "MODEL_URI": f"file://{tiny_model}",
        "MODEL_CACHE_DIR": str(tmp_path_factory.mktemp("cache")), "N_CTX": "1024",
        "N_THREADS": "1", "SHUTDOWN_GRACE_S": "5", "EVENTS_FLUSH_S": "2"})
    yield factory().app.test_client()
    factory.stop_all()


def sse(text: str) -> list[dict]:
    events = []
    for block in text.split("\n\n"):
        lines = block.splitlines()
        if lines and lines[0].startswith("event: "):
            data = json.loads(lines[1].removeprefix("data: "))
            assert lines[0] == f"event: {data['type']}"
            events.append(data)
    return events


def test_text_answer_and_its_events(client):
    body = {"input": "vpvm", "max_output_tokens": 3, "temperature": 0,
            "metadata": {"k": "v"}, "instructions": "Be brief."}
    r = client.post("/v1/responses", json=body)
    assert r.status_code == 200, r.get_json()
    out = r.get_json()
    assert out["object"] == "response" and out["id"].startswith("resp_")
    assert out["status"] == "incomplete"  # 3 tokens: cut short
    assert out["incomplete_details"] == {"reason": "max_output_tokens"}
    assert out["metadata"] == {"k": "v"} and out["store"] is False
    usage = out["usage"]
    assert usage["output_tokens"] == 3 and usage["input_tokens_details"]["cached_tokens"] >= 0
    [item] = out["output"]
    assert item["type"] == "message" and item["role"] == "assistant"
    text = item["content"][0]["text"]

    events = sse(client.post("/v1/responses", json={**body, "stream": True}).get_data(
        as_text=True))
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    kinds = [e["type"] for e in events]
    assert kinds[:4] == ["response.created", "response.in_progress",
                         "response.output_item.added", "response.content_part.added"]
    assert kinds[-4:] == ["response.output_text.done", "response.content_part.done",
                          "response.output_item.done", "response.incomplete"]
    assert "".join(e["delta"] for e in events if e["type"].endswith("text.delta")) == text
    assert events[-1]["response"]["output"][0]["content"][0]["text"] == text
    # the same prompt again: the slot's reused prefix is chat's cached_tokens, under its name
    again = events[-1]["response"]["usage"]
    assert again["input_tokens"] == usage["input_tokens"]
    assert 0 < again["input_tokens_details"]["cached_tokens"] < again["input_tokens"]


def test_forced_call_and_a_round_trip(client):
    tool = {"type": "function", "name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"enum": ["Paris", "Rome"]}},
        "required": ["city"], "additionalProperties": False}}
    body = {"input": "weather?", "tools": [tool], "tool_choice": "required",
            "max_output_tokens": 80, "temperature": 0}
    r = client.post("/v1/responses", json=body)
    assert r.status_code == 200, r.get_json()
    out = r.get_json()
    [call] = out["output"]
    assert call["type"] == "function_call" and call["name"] == "get_weather"
    assert json.loads(call["arguments"])["city"] in ("Paris", "Rome")
    assert out["tool_choice"] == "required" and out["tools"][0]["name"] == "get_weather"
    events = sse(client.post("/v1/responses", json={**body, "stream": True}).get_data(
        as_text=True))
    kinds = [e["type"] for e in events]
    assert kinds[2:6] == ["response.output_item.added", "response.function_call_arguments.delta",
                          "response.function_call_arguments.done", "response.output_item.done"]
    # the call and its output sent back
    back = {"input": [{"role": "user", "content": "weather?"}, call,
                      {"type": "function_call_output", "call_id": call["call_id"],
                       "output": "sunny"}], "tools": [tool], "max_output_tokens": 2}
    r = client.post("/v1/responses", json=back)
    assert r.status_code == 200, r.get_json()


def test_items_translate_to_chat_messages():
    req = decode(rp.ResponseRequest, {"instructions": "sys", "input": [
        {"role": "developer", "content": [{"type": "input_text", "text": "a"},
                                          {"type": "input_text", "text": "b"}]},
        {"type": "message", "role": "assistant", "id": "msg_1", "status": "completed",
         "content": [{"type": "output_text", "text": "hi", "annotations": []}]},
        {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
        {"type": "function_call", "call_id": "c2", "name": "g", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c1", "output": "x"}]})
    places: list[str] = []
    chat = responses.to_chat(req, places)
    assert [(m.role, m.content) for m in chat.messages] == [
        ("system", "sys"), ("developer", "ab"), ("assistant", "hi"), ("tool", "x")]
    assert [c.id for c in chat.messages[2].tool_calls] == ["c1", "c2"]
    assert places == ["instructions", "input[0]", "input[1]", "input[4]"]


@pytest.mark.parametrize("body,param,words", [
    ({"input": "x", "store": True}, "store", "keeps no state"),
    ({"input": "x", "previous_response_id": "resp_1"}, "previous_response_id",
     "keeps no state"),
    ({"input": "x", "background": True}, "background", "keeps no state"),
    ({"input": "x", "conversation": "conv_1"}, "conversation", "keeps no state"),
    ({"input": [{"role": "user", "content": [
        {"type": "input_text", "text": "see"},
        {"type": "input_image", "image_url": "data:image/png;base64,AA=="}]}]},
     "input[0].content[1]", "input_image"),
    ({"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]},
     "input[0].content[0]", "input_file"),
    ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input[0]", "item_reference"),
    ({"input": "x", "tools": [{"type": "web_search"}]}, "tools[0]", "web_search"),
    ({"input": "x", "tool_choice": {"type": "web_search_preview"}}, "tool_choice",
     "web_search_preview"),
    ({"input": "x", "top_logprobs": 2}, "top_logprobs", "chat/completions"),
    ({"input": "x", "max_output_tokens": 100000}, "input", "maximum context length"),
    ({"input": "x", "max_output_tokens": 0}, "max_output_tokens", ">= 1"),
    ({"input": [{"role": "user", "content": "x"}], "text": {"format": {
        "type": "json_schema", "name": "n", "schema": {"type": "string",
                                                      "format": "idn-email"}}}},
     "text.format", "idn-email"),
    ({"input": "x", "modalities": ["text"]}, None, "modalities"),
    ({"input": [{"role": "robot", "content": "x"}]}, "input[0].role", "role"),
    ({"input": [{"type": "function_call_output", "output": "x"}]}, "input[0].call_id",
     "call_id"),
])
def test_bad_requests_name_the_param(client, body, param, words):
    r = client.post("/v1/responses", json=body)
    assert r.status_code == 400, r.get_json()
    err = r.get_json()["error"]
    assert err["type"] == "invalid_request_error"
    if param is not None:
        assert err["param"] == param, err
    assert words in err["message"], err


def test_defaults_clients_send_are_accepted(client):
    """What the Agents SDK, openai-python, Vercel's @ai-sdk/openai and Codex send unasked."""
    r = client.post("/v1/responses", json={
        "input": "x", "max_output_tokens": 1, "store": False, "include": [
            "reasoning.encrypted_content"], "reasoning": {"effort": None, "summary": None},
        "prompt_cache_key": "k", "user": "u", "truncation": "disabled",
        "service_tier": "auto", "parallel_tool_calls": True, "safety_identifier": "s",
        "stream_options": {"include_obfuscation": False}, "top_logprobs": 0,
        "text": {"format": {"type": "text"}, "verbosity": "medium"}, "model": None})
    assert r.status_code == 200, r.get_json()


def test_inference_events_name_the_route_and_api(make_runtime):
    from tests.support.eventsink import running_receiver
    with running_receiver() as sink:
        rt = make_runtime(K_SINK=sink.url)
        c = rt.app.test_client()
        assert c.post("/v1/responses", json={"input": "x", "max_output_tokens": 1}
                      ).status_code == 200
        assert c.post("/v1/responses", json={"input": "x", "store": True}).status_code == 400
        assert rt.events.flush(30) and sink.wait_requests(2)
        events = [e["data"] for e in sink.events()]
    assert [(e["endpoint"], e["api"], e["status"]) for e in events] == [
        ("/v1/responses", "responses", 200), ("/v1/responses", "responses", 400)]


def test_a_client_leaving_after_the_first_event_cancels_the_generation(make_runtime):
    from llmfn import routes
    from llmfn.origin import Origin
    from tests.support.eventsink import running_receiver
    with running_receiver() as sink:
        rt = make_runtime(K_SINK=sink.url)
        result = routes.handler(rt.app, "/v1/responses")(routes.Inbound(
            "/v1/responses", Origin.fresh(),
            lambda: {"input": "x", "max_output_tokens": 200, "stream": True}))
        first = next(result.payload)
        assert first.startswith(b"event: response.created\n")
        result.payload.close()  # what the server does when the client goes away
        assert rt.events.flush(30) and sink.wait_requests(1)
        [event] = [e["data"] for e in sink.events()]
    assert event["status"] == 499 and event["finish_reason"] == "cancelled"
    assert event["completion_tokens"] < 200


def test_text_format_is_chats_structured_output(client):
    """text.format json_schema on chat's engine: the answer is constrained to the schema."""
    schema = {"type": "object", "properties": {"a": {"enum": ["x", "y"]}}, "required": ["a"],
              "additionalProperties": False}
    r = client.post("/v1/responses", json={
        "input": "x", "max_output_tokens": 40, "temperature": 0,
        "text": {"format": {"type": "json_schema", "name": "s", "schema": schema,
                            "strict": True}}})
    assert r.status_code == 200, r.get_json()
    out = r.get_json()
    assert out["text"]["format"]["schema"] == schema and out["status"] == "completed"
    assert json.loads(out["output"][0]["content"][0]["text"])["a"] in ("x", "y")
