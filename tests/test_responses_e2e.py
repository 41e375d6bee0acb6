"""OpenAI's Responses API as its clients see it: generate (gunicorn, SmolLM2-135M-Instruct from
MinIO, a key on: conftest's agents_generate) against the Open Responses document and the real
clients.

- Conformance: the six cases of the Open Responses compliance suite (basic, streaming, system
  prompt, tool calling, streamed tool calling, multi-turn; its requests, the tool cases with
  ``tool_choice: "required"`` added: the 135M model seldom picks a tool by itself; all with
  temperature 0 and max_output_tokens 128, and the streaming case's prompt asks for "the
  numbers only", so each ends "completed" as the suite wants), every
  non-streamed response and every streamed event validated against the schemas of
  ../shared/openresponses/openapi.json (read from there, never copied), ``sequence_number``
  from 0 with no gaps; the suite's seventh case, image input, is a 400 naming the part.
- openai-python: ``responses.create``, ``responses.stream``, ``responses.parse`` with a
  Pydantic model.
- The OpenAI Agents SDK with its default model (``OpenAIResponsesModel``) and a function tool:
  the call, the tool's run and its output sent back in a second request (the protocol round
  trip; the first call forced with ``tool_choice``, reset after it as the SDK does).
"""
from __future__ import annotations

import asyncio
import json

import httpx
import pytest
from jsonschema import Draft202012Validator
from openai import AsyncOpenAI, BadRequestError, OpenAI
from pydantic import BaseModel, Field
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from scripts.procs import REPO_ROOT
from tests.support.agents import AGENTS_KEY

MODEL = "smollm2-135m-instruct-q4_1"
DOCUMENT = REPO_ROOT.parent / "shared" / "openresponses" / "openapi.json"
BASE = "urn:openresponses"
WEATHER = {"type": "function", "name": "get_weather",
           "description": "Get the current weather for a location",
           "parameters": {"type": "object", "properties": {"location": {
               "type": "string", "description": "The city and state, e.g. San Francisco, CA"}},
               "required": ["location"]}}
SF = [{"type": "message", "role": "user", "content": "What's the weather like in San Francisco?"}]
GREEDY = {"temperature": 0, "max_output_tokens": 128}  # added: bounded, reproducible
COUNT = "Count from 1 to 5. Reply with the numbers only."  # greedy, the suite's prompt goes on
CASES = {  # the compliance suite's requests (src/lib/compliance-tests.ts)
    "basic-response": ({"input": [{"type": "message", "role": "user",
                                   "content": "Say hello in exactly 3 words."}]}, False),
    "streaming-response": ({"input": [{"type": "message", "role": "user",
                                       "content": COUNT}]}, True),
    "system-prompt": ({"input": [
        {"type": "message", "role": "system",
         "content": "You are a pirate. Always respond in pirate speak."},
        {"type": "message", "role": "user", "content": "Say hello."}]}, False),
    "tool-calling": ({"input": SF, "tools": [WEATHER], "tool_choice": "required"}, False),
    "tool-calling-streaming": ({"input": SF, "tools": [WEATHER], "tool_choice": "required"},
                               True),
    "multi-turn": ({"input": [
        {"type": "message", "role": "user", "content": "My name is Alice."},
        {"type": "message", "role": "assistant",
         "content": "Hello Alice! Nice to meet you. How can I help you today?"},
        {"type": "message", "role": "user", "content": "What is my name?"}]}, False),
}


@pytest.fixture(scope="module")
def server(agents_generate):
    """generate with SmolLM2 and API_KEYS set, shared with the other agent-client modules."""
    return agents_generate


@pytest.fixture(scope="module")
def client(server):
    return OpenAI(base_url=f"{server.url}/v1", api_key=AGENTS_KEY, max_retries=0, timeout=120)


def post(server, body: dict, timeout: float = 120) -> httpx.Response:
    return httpx.post(f"{server.url}/v1/responses", json=body, timeout=timeout,
                      headers={"Authorization": f"Bearer {AGENTS_KEY}"})


# -- conformance ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def spec():
    """Validators of the document's schemas: ``spec(name)``; the stream events' schemas by
    their ``type``."""
    doc = json.loads(DOCUMENT.read_text())
    registry = Registry().with_resource(BASE, Resource.from_contents(
        doc, default_specification=DRAFT202012))

    def validator(name: str) -> Draft202012Validator:
        return Draft202012Validator({"$ref": f"{BASE}#/components/schemas/{name}"},
                                    registry=registry)

    stream = doc["paths"]["/responses"]["post"]["responses"]["200"]["content"][
        "text/event-stream"]["schema"]["oneOf"]
    events = {}
    for ref in stream:
        name = ref["$ref"].rsplit("/", 1)[1]
        events[doc["components"]["schemas"][name]["properties"]["type"]["enum"][0]] = name
    validator.events = events
    return validator


def errors_of(validator: Draft202012Validator, instance) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message[:300]}"
            for e in validator.iter_errors(instance)]


def sse_events(text: str) -> list[dict]:
    out = []
    for block in text.split("\n\n"):
        data = [line[len("data: "):] for line in block.splitlines() if line.startswith("data: ")]
        if data:
            out.append(json.loads("\n".join(data)))
    return out


@pytest.mark.parametrize("case", list(CASES))
def test_compliance_case(server, spec, case):
    body, streaming = CASES[case]
    r = post(server, {"model": MODEL, **body, **GREEDY, "stream": streaming})
    assert r.status_code == 200, r.text
    if streaming:
        events = sse_events(r.text)
        assert [e["sequence_number"] for e in events] == list(range(len(events)))
        for event in events:
            name = spec.events[event["type"]]
            assert errors_of(spec(name), event) == [], (name, event)
        final = events[-1]
        assert final["type"] == "response.completed"
        response = final["response"]
        kinds = [e["type"] for e in events]
        assert kinds[:2] == ["response.created", "response.in_progress"]
    else:
        response = r.json()
    assert errors_of(spec("ResponseResource"), response) == []
    assert response["output"] and response["status"] == "completed"  # the suite's validators
    if case.startswith("tool-calling"):
        assert [item["type"] for item in response["output"]] == ["function_call"]
        assert "location" in json.loads(response["output"][0]["arguments"])
    if case == "tool-calling-streaming":
        assert kinds[2:6] == ["response.output_item.added",
                              "response.function_call_arguments.delta",
                              "response.function_call_arguments.done",
                              "response.output_item.done"]
        assert events[2]["item"]["type"] == "function_call"


def test_image_input_is_a_clear_400(server):
    """The suite's seventh case: a text model answers it with a 400 naming the part."""
    r = post(server, {"model": MODEL, "input": [
        {"type": "message", "role": "user", "content": [
            {"type": "input_text", "text": "What do you see in this image?"},
            {"type": "input_image", "image_url": "data:image/png;base64,iVBORw0KGgo="}]}]})
    assert r.status_code == 400
    error = r.json()["error"]
    assert error["param"] == "input[0].content[1]" and "input_image" in error["message"]


# -- openai-python --------------------------------------------------------------------------------
def test_create(client):
    response = client.responses.create(model=MODEL, instructions="Answer briefly.",
                                       input="Say hello.", max_output_tokens=8, temperature=0,
                                       metadata={"case": "create"})
    assert response.status in ("completed", "incomplete") and response.output_text
    assert response.metadata == {"case": "create"} and response.id.startswith("resp_")
    usage = response.usage
    assert 0 < usage.output_tokens <= 8 and usage.input_tokens > 5
    assert usage.input_tokens_details.cached_tokens >= 0
    assert usage.output_tokens_details.reasoning_tokens == 0
    with pytest.raises(BadRequestError) as err:
        client.responses.create(model=MODEL, input="hi", store=True)
    assert err.value.body["param"] == "store" and "keeps no state" in err.value.body["message"]


def test_stream(client):
    deltas, kinds = [], []
    with client.responses.stream(model=MODEL, input=COUNT, max_output_tokens=64,
                                 temperature=0) as stream:
        for event in stream:
            kinds.append(event.type)
            if event.type == "response.output_text.delta":
                deltas.append(event.delta)
        final = stream.get_final_response()  # the SDK needs response.completed
    assert deltas and final.output_text == "".join(deltas)
    assert final.usage.output_tokens <= 64 and kinds[-1] == "response.completed"
    # cut short by max_output_tokens: response.incomplete, as OpenAI ends such a stream
    with client.responses.stream(model=MODEL, input="Count from 1 to 5.",
                                 max_output_tokens=2) as stream:
        last = list(stream)[-1]
    assert last.type == "response.incomplete"
    assert last.response.incomplete_details.reason == "max_output_tokens"


class City(BaseModel):
    name: str = Field(max_length=20)
    country: str = Field(max_length=20)


def test_parse(client):
    response = client.responses.parse(model=MODEL, input="Paris is in France. Give the city.",
                                      text_format=City, max_output_tokens=60, temperature=0)
    assert response.status == "completed"
    assert isinstance(response.output_parsed, City)


# -- the OpenAI Agents SDK ------------------------------------------------------------------------
def test_agents_sdk_tool_round_trip(server):
    from agents import (
        Agent,
        ModelSettings,
        OpenAIResponsesModel,
        Runner,
        function_tool,
        set_tracing_disabled,
    )
    set_tracing_disabled(True)
    calls: list[str] = []

    @function_tool
    def get_weather(city: str) -> str:
        """The weather in a city."""
        calls.append(city)
        return f"It is sunny in {city}."

    model = OpenAIResponsesModel(model=MODEL, openai_client=AsyncOpenAI(
        base_url=f"{server.url}/v1", api_key=AGENTS_KEY, max_retries=0, timeout=120))
    agent = Agent(name="weather", instructions="Answer with the weather.", tools=[get_weather],
                  model=model, model_settings=ModelSettings(
                      tool_choice="get_weather", temperature=0, max_tokens=40))
    result = asyncio.run(Runner.run(agent, "What is the weather in Paris?", max_turns=2))
    assert len(calls) == 1 and calls[0]
    kinds = [item.type for item in result.new_items]
    assert kinds[:2] == ["tool_call_item", "tool_call_output_item"]
    assert kinds[-1] == "message_output_item" and result.final_output
    assert len(result.raw_responses) == 2  # the tool's output went back in a second request
