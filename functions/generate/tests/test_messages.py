"""The Messages API's translation (messages.py), without a model: an Anthropic request to the
chat request that answers it, chat chunks to Anthropic's stream events (tool uses, keep-alive
pings, an error after the start), statuses to Anthropic's error types."""
from __future__ import annotations

import json

import pytest

from function import messages, protocol
from function import messages_protocol as mp
from function.api import KEEPALIVE
from function.scheduler import Generation, Outcome
from llmfn.errors import InvalidRequest, NotReady, QueueFull, ShuttingDown
from llmfn.protocol import decode

HEAD = {"id": "chatcmpl-1", "created": 1, "model": "m"}
WAIT_S = 30.0


def request(**body) -> mp.MessagesRequest:
    full = {"model": "m", "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}],
            **body}
    mp.check_blocks(full)
    return decode(mp.MessagesRequest, full)


def test_conversation_with_tool_use_and_result():
    chat = messages.to_chat(request(
        system=[{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}],
        messages=[{"role": "user", "content": "Weather?"},
                  {"role": "assistant", "content": [
                      {"type": "text", "text": "Let me look."},
                      {"type": "tool_use", "id": "toolu_1", "name": "w", "input": {"c": "P"}}]},
                  {"role": "user", "content": [
                      {"type": "tool_result", "tool_use_id": "toolu_1",
                       "content": [{"type": "text", "text": "sunny"}]},
                      {"type": "text", "text": "And tomorrow?"}]}],
        tools=[{"name": "w", "input_schema": {"type": "object"}}],
        tool_choice={"type": "any"}, stop_sequences=["END"], temperature=0.5, top_k=3,
        stream=True))
    roles = [(m.role, m.content) for m in chat.messages]
    assert roles == [("system", "Be brief."), ("user", "Weather?"),
                     ("assistant", "Let me look."), ("tool", "sunny"),
                     ("user", "And tomorrow?")]
    call = chat.messages[2].tool_calls[0]
    assert (call.id, call.function.name, json.loads(call.function.arguments)) == (
        "toolu_1", "w", {"c": "P"})
    assert chat.messages[3].tool_call_id == "toolu_1"
    assert chat.tool_choice == "required" and chat.tools[0].function.parameters == {
        "type": "object"}
    assert (chat.max_tokens, chat.stop, chat.temperature, chat.top_k, chat.stream) == (
        4, ["END"], 0.5, 3, True)


def test_keys_clients_send_on_blocks_are_accepted():
    """cache_control on system, message and tool blocks, citations, a tool's $schema, metadata,
    service_tier and the newer SDKs' top-level keys, as Claude Code and the SDKs send them."""
    ephemeral = {"type": "ephemeral"}
    chat = messages.to_chat(request(
        system=[{"type": "text", "text": "S", "cache_control": ephemeral}],
        messages=[{"role": "user", "content": [
            {"type": "text", "text": "hi", "cache_control": ephemeral, "citations": None}]}],
        tools=[{"name": "w", "description": "d", "cache_control": ephemeral,
                "input_schema": {"$schema": "http://json-schema.org/draft-07/schema#",
                                 "type": "object", "properties": {}}}],
        metadata={"user_id": "u"}, service_tier="auto", cache_control=ephemeral,
        output_config={"effort": "low"}, speed="standard", inference_geo="eu"))
    assert [m.content for m in chat.messages] == ["S", "hi"] and chat.response_format is None
    structured = messages.to_chat(request(output_config={"format": {
        "type": "json_schema", "schema": {"type": "object"}}}))
    assert structured.response_format.json_schema.schema == {"type": "object"}


@pytest.mark.parametrize(("choice", "chat"), [
    ({"type": "auto"}, "auto"), ({"type": "none"}, "none"), ({"type": "any"}, "required")])
def test_tool_choice(choice, chat):
    tools = [{"name": "w", "input_schema": {"type": "object"}}]
    assert messages.to_chat(request(tools=tools, tool_choice=choice)).tool_choice == chat
    named = messages.to_chat(request(tools=tools, tool_choice={"type": "tool", "name": "w"}))
    assert named.tool_choice.function.name == "w"


@pytest.mark.parametrize(("body", "param"), [
    ({"messages": [{"role": "user", "content": [{"type": "image", "source": {}}]}]},
     "messages[0].content[0]"),
    ({"messages": [{"role": "user", "content": [{"type": "document", "source": {}}]}]},
     "messages[0].content[0]"),
    ({"messages": [{"role": "assistant", "content": [{"type": "thinking", "thinking": ""}]}]},
     "messages[0].content[0]"),
    ({"messages": [{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t",
                                                 "content": [{"type": "image"}]}]}]},
     "messages[0].content[0].content[0]"),
    ({"system": [{"type": "image"}]}, "system[0]"),
    ({"tools": [{"type": "web_search_20250305", "name": "web_search"}]}, "tools[0]"),
    ({"thinking": {"type": "enabled", "budget_tokens": 1024}}, "thinking"),
    ({"mcp_servers": []}, "mcp_servers"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"temperature": 1.5}, "temperature"),
    ({"top_k": -1}, "top_k"),
    ({"stop_sequences": ["a", "b", "c", "d", "e"]}, "stop_sequences"),
    ({"unknown": 1}, "unknown"),
    ({"tool_choice": {"type": "any"}}, "tool_choice"),
    ({"tools": [{"name": "w", "input_schema": {}}], "tool_choice": {"type": "tool",
                                                                      "name": "x"}},
     "tool_choice.name"),
    ({"messages": [{"role": "user", "content": [{"type": "tool_use", "id": "t", "name": "w",
                                                 "input": {}}]}]}, "messages[0].content[0]"),
])
def test_bad_requests_name_the_place(body, param):
    with pytest.raises(InvalidRequest) as err:
        messages.to_chat(request(**body))
    assert err.value.param == param and err.value.status == 400


@pytest.mark.parametrize(("err", "status", "kind"), [
    (InvalidRequest("x"), 400, "invalid_request_error"),
    (QueueFull("x"), 429, "rate_limit_error"),
    (NotReady("x"), 503, "overloaded_error"),
    (ShuttingDown(2), 503, "overloaded_error"),
])
def test_error_types(err, status, kind):
    assert err.status == status
    assert messages.error_body(err) == {"type": "error", "error": {"type": kind,
                                                                   "message": err.message}}


def chunk(content=None, calls=None, finish=None, usage=None) -> protocol.ChatCompletionChunk:
    delta = protocol.Delta()
    if content is not None:
        delta = protocol.Delta(content=content)
    if calls is not None:
        delta = protocol.Delta(tool_calls=calls)
    choices = [] if usage is not None else [protocol.ChunkChoice(
        index=0, delta=delta, logprobs=None, finish_reason=finish)]
    return protocol.ChatCompletionChunk(**HEAD, choices=choices, usage=usage)


def finished(outcome: Outcome | None = None) -> Generation:
    job = Generation([1], None)
    job.outcome = outcome
    return job


def parse(stream) -> list[dict]:
    events = []
    for raw in stream:
        head, data = raw.decode().strip().split("\n")
        event = json.loads(data.removeprefix("data: "))
        assert head == f"event: {event['type']}"
        events.append(event)
    return events


def generator(items):
    """The chunks as run_chat gives them: a generator (closing it cancels)."""
    yield from items


USAGE = protocol.CompletionUsage(prompt_tokens=10, completion_tokens=3, total_tokens=13)


def test_stream_of_text_then_tool_use():
    call = protocol.ToolCallDelta(index=0, id="call_ab", function=protocol.FunctionCallOut(
        name="w", arguments='{"c": "P"}'))
    chunks = generator([chunk(""), KEEPALIVE, chunk("Hi"), chunk(" there"), chunk(calls=[call]),
                   chunk(finish="tool_calls"), chunk(usage=USAGE)])
    events = parse(messages.events(chunks, "r1", "m", finished(Outcome()), []))
    assert [e["type"] for e in events] == [
        "message_start", "ping", "content_block_start", "ping", "content_block_delta",
        "content_block_delta", "content_block_stop", "content_block_start",
        "content_block_delta", "content_block_stop", "message_delta", "message_stop"]
    assert events[0]["message"]["id"] == "msg_r1" and events[0]["message"]["content"] == []
    assert events[0]["message"]["usage"]["input_tokens"] == 1  # the prompt: [1]
    assert events[2] == {"type": "content_block_start", "index": 0,
                         "content_block": {"type": "text", "text": "", "citations": None}}
    assert events[7]["index"] == 1 and events[7]["content_block"] == {
        "type": "tool_use", "id": "toolu_ab", "name": "w", "input": {}}
    assert events[8]["delta"] == {"type": "input_json_delta", "partial_json": '{"c": "P"}'}
    assert events[10]["delta"] == {"stop_reason": "tool_use", "stop_sequence": None}
    assert events[10]["usage"]["output_tokens"] == 3 and events[10]["usage"][
        "input_tokens"] == 10


def test_stream_stop_sequence():
    chunks = generator([chunk("a"), chunk(finish="stop"), chunk(usage=USAGE)])
    done = finished(Outcome(finish_reason="stop", stop_sequence="END"))
    events = parse(messages.events(chunks, "r", "m", done, ["END"]))
    assert events[-2]["delta"] == {"stop_reason": "stop_sequence", "stop_sequence": "END"}
    # the chat template's own end is not the request's stop sequence
    chunks = generator([chunk("a"), chunk(finish="stop"), chunk(usage=USAGE)])
    done = finished(Outcome(finish_reason="stop", stop_sequence="<|im_end|>"))
    events = parse(messages.events(chunks, "r", "m", done, ["END"]))
    assert events[-2]["delta"] == {"stop_reason": "end_turn", "stop_sequence": None}


def test_error_after_the_start_is_an_error_event():
    def failing():
        yield chunk("a")
        raise ShuttingDown(2)  # the pipeline raises it once the stream has started

    closed = []

    class Chunks:
        def __init__(self):
            self.it = failing()

        def __iter__(self):
            return self

        def __next__(self):
            return next(self.it)

        def close(self):
            closed.append(True)

    events = parse(messages.events(Chunks(), "r", "m", finished(), []))
    assert [e["type"] for e in events][-1] == "error"
    assert events[-1]["error"] == {"type": "overloaded_error",
                                   "message": "The function is shutting down. Retry shortly."}
    assert [e["type"] for e in events][:2] == ["message_start", "content_block_start"]
    assert closed == [True]


def test_routes_answer_and_record_events(make_runtime):
    """On the tiny model: a message, a stream and a count, and their inference events (the
    route and api ``messages``), a 400 before generating recorded too."""
    from tests.support.eventsink import running_receiver

    body = {"max_tokens": 3, "messages": [{"role": "user", "content": "vpvm"}],
            "temperature": 0}
    with running_receiver() as sink:
        rt = make_runtime(K_SINK=sink.url)
        body["model"] = rt.host.model_id
        c = rt.app.test_client()
        r = c.post("/v1/messages", json=body)
        assert r.status_code == 200 and r.headers["X-Request-Id"]
        message = r.get_json()
        assert message["type"] == "message" and message["stop_reason"] == "max_tokens"
        assert message["usage"]["output_tokens"] == 3
        streamed = c.post("/v1/messages", json={**body, "stream": True})
        events = parse(raw + b"\n\n" for raw in streamed.get_data().split(b"\n\n") if raw)
        text = "".join(e["delta"]["text"] for e in events if e["type"] == "content_block_delta")
        assert text == message["content"][0]["text"]
        counted = c.post("/v1/messages/count_tokens", json={
            "model": rt.host.model_id, "messages": body["messages"]}).get_json()
        assert counted["input_tokens"] == message["usage"]["input_tokens"] + message[
            "usage"]["cache_read_input_tokens"]
        bad = c.post("/v1/messages", json={**body, "top_k": "x"})
        assert bad.status_code == 400 and bad.get_json()["error"]["type"] == \
            "invalid_request_error"
        assert rt.events.flush(WAIT_S) and sink.wait_requests(3)
        recorded = [e["data"] for e in sink.events() if e["data"]["endpoint"] == "/v1/messages"]
    assert sorted(e["status"] for e in recorded) == [200, 200, 400]
    assert {e["api"] for e in recorded} == {"messages"}


def test_a_client_leaving_after_message_start_cancels_the_generation(make_runtime):
    """The chat stream starts before message_start is sent, so closing the response then
    (the client went away) cancels the generation and records the inference event."""
    from llmfn import routes
    from llmfn.origin import Origin
    from tests.support.eventsink import running_receiver
    with running_receiver() as sink:
        rt = make_runtime(K_SINK=sink.url)
        result = routes.handler(rt.app, "/v1/messages")(routes.Inbound(
            "/v1/messages", Origin.fresh(), lambda: {
                "model": rt.host.model_id, "max_tokens": 200, "stream": True,
                "messages": [{"role": "user", "content": "x"}]}))
        first = next(result.payload)
        assert first.startswith(b"event: message_start\n")
        result.payload.close()  # what the server does when the client goes away
        assert rt.events.flush(30) and sink.wait_requests(1)
        [event] = [e["data"] for e in sink.events()]
    assert (event["api"], event["status"], event["finish_reason"]) == (
        "messages", 499, "cancelled")
    assert event["completion_tokens"] < 200
