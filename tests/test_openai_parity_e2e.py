"""The OpenAI API without silent gaps, as a new user tries it: the official `openai` client
against generate (gunicorn, SmolLM2-135M-Instruct from MinIO).

Structured outputs with `chat.completions.parse` and several Pydantic models (nested objects,
enums, lists, optional fields), streamed and not, each validated with jsonschema; tools with
`tool_choice` required and named; logprobs; n; a parameter we cannot honour is a 400 naming it.
"""
from __future__ import annotations

import json
from enum import StrEnum
from typing import Literal

import jsonschema
import pytest
from openai import BadRequestError, OpenAI
from openai.lib._pydantic import to_strict_json_schema
from pydantic import BaseModel, Field

from scripts import procs, run
from tests.support.models import upload_function_models

READY_S = 180
MAX_TOKENS = 300


class Color(StrEnum):
    red = "red"
    green = "green"
    blue = "blue"


class Person(BaseModel):
    name: str = Field(max_length=20)
    age: int
    favorite_color: Color


class Item(BaseModel):
    name: str = Field(max_length=16)
    quantity: int


class Order(BaseModel):
    customer: Person
    items: list[Item] = Field(max_length=3)


class Book(BaseModel):
    title: str = Field(max_length=40)
    subtitle: str | None = Field(max_length=40)
    tags: list[Literal["fiction", "history", "science"]] = Field(max_length=3)


CASES = [(Person, "Describe a person named Alice who is 30 and likes blue."),
         (Order, "Alice, 30, likes blue, orders 2 apples and 1 pear."),
         (Book, "A history book about Rome, no subtitle.")]

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city.",
    "parameters": {"type": "object", "properties": {
        "city": {"type": "string", "maxLength": 20},
        "unit": {"enum": ["celsius", "fahrenheit"]}},
        "required": ["city", "unit"], "additionalProperties": False}}}
TIME = {"type": "function", "function": {
    "name": "get_time", "description": "The time in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string",
                                                             "maxLength": 20}},
                   "required": ["city"], "additionalProperties": False}}}


@pytest.fixture(scope="module")
def client(minio, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("parity")
    upload_function_models(minio)
    env = run.function_env("generate", run.FUNCTIONS["generate"][2], minio, None, False, "")
    env.update(MODEL_CACHE_DIR=str(tmp / "cache"), N_THREADS="2")
    server = procs.gunicorn_server("generate", procs.free_port(), env=env,
                                   log_path=tmp / "generate.log").start()
    try:
        server.wait_ready(READY_S)
        yield OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0,
                     timeout=120)
    finally:
        server.stop()


@pytest.mark.parametrize("model,question", CASES, ids=[c[0].__name__ for c in CASES])
def test_parse_gives_valid_objects(client, model, question):
    completion = client.chat.completions.parse(
        model="smollm2-135m-instruct-q4_1", messages=[{"role": "user", "content": question}],
        response_format=model, max_tokens=MAX_TOKENS, temperature=0)
    choice = completion.choices[0]
    assert choice.finish_reason == "stop"
    assert isinstance(choice.message.parsed, model)
    jsonschema.validate(json.loads(choice.message.content), to_strict_json_schema(model))


@pytest.mark.parametrize("model,question", CASES, ids=[c[0].__name__ for c in CASES])
def test_streamed_structured_output_is_valid(client, model, question):
    with client.chat.completions.stream(
            model="smollm2-135m-instruct-q4_1",
            messages=[{"role": "user", "content": question}], response_format=model,
            max_tokens=MAX_TOKENS, temperature=0.7, seed=11) as stream:
        final = stream.get_final_completion()
    choice = final.choices[0]
    assert choice.finish_reason == "stop"
    jsonschema.validate(json.loads(choice.message.content), to_strict_json_schema(model))
    assert isinstance(choice.message.parsed, model)


def test_json_object_mode_parses(client):
    r = client.chat.completions.create(
        model="smollm2-135m-instruct-q4_1", max_tokens=MAX_TOKENS, temperature=0,
        messages=[{"role": "user", "content": "Give Alice's age (30) as JSON."}],
        response_format={"type": "json_object"})
    if r.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(r.choices[0].message.content), dict)
    else:  # only a length stop may leave it unfinished
        assert r.choices[0].finish_reason == "length"


@pytest.mark.parametrize("choice", ["required", {"type": "function",
                                                 "function": {"name": "get_time"}}])
def test_tool_calls_are_valid_calls(client, choice):
    r = client.chat.completions.create(
        model="smollm2-135m-instruct-q4_1", max_tokens=MAX_TOKENS, temperature=0,
        messages=[{"role": "user", "content": "What is the weather in Paris?"}],
        tools=[WEATHER, TIME], tool_choice=choice)
    out = r.choices[0]
    assert out.finish_reason == "tool_calls" and out.message.content is None
    call = out.message.tool_calls[0]
    by_name = {t["function"]["name"]: t["function"]["parameters"] for t in (WEATHER, TIME)}
    if isinstance(choice, dict):
        assert call.function.name == "get_time"
    jsonschema.validate(json.loads(call.function.arguments), by_name[call.function.name])
    # the result goes back in a tool message, and the conversation goes on
    follow = client.chat.completions.create(
        model="smollm2-135m-instruct-q4_1", max_tokens=8, temperature=0,
        messages=[{"role": "user", "content": "What is the weather in Paris?"},
                  out.message.model_dump(exclude_none=True),
                  {"role": "tool", "tool_call_id": call.id, "content": "18 C, sunny"}])
    assert follow.choices[0].message.content


def test_streamed_tool_call(client):
    stream = client.chat.completions.create(
        model="smollm2-135m-instruct-q4_1", max_tokens=MAX_TOKENS, temperature=0,
        messages=[{"role": "user", "content": "Weather in Oslo?"}], tools=[WEATHER],
        tool_choice="required", stream=True)
    chunks = list(stream)
    deltas = [c.choices[0].delta.tool_calls for c in chunks
              if c.choices and c.choices[0].delta.tool_calls]
    assert deltas and deltas[0][0].function.name == "get_weather"
    jsonschema.validate(json.loads(deltas[0][0].function.arguments),
                        WEATHER["function"]["parameters"])
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_logprobs_and_n(client):
    r = client.chat.completions.create(
        model="smollm2-135m-instruct-q4_1", max_tokens=4, temperature=0.8, seed=3, n=2,
        messages=[{"role": "user", "content": "Say hi."}], logprobs=True, top_logprobs=3)
    assert len(r.choices) == 2
    for choice in r.choices:
        entries = choice.logprobs.content
        assert "".join(e.token for e in entries) == choice.message.content
        for e in entries:
            assert e.logprob <= 0 and len(e.top_logprobs) == 3
            assert e.top_logprobs[0].logprob >= e.logprob - 1e-9
    assert r.usage.completion_tokens == sum(
        len(c.logprobs.content) + (c.finish_reason == "stop") * 0 for c in r.choices)


def test_what_we_cannot_honour_is_a_400_naming_it(client):
    with pytest.raises(BadRequestError) as info:
        client.chat.completions.create(model="smollm2-135m-instruct-q4_1", max_tokens=4,
                                       messages=[{"role": "user", "content": "hi"}],
                                       reasoning_effort="high")
    assert info.value.body["param"] == "reasoning_effort"
    with pytest.raises(BadRequestError) as info:
        client.completions.create(model="smollm2-135m-instruct-q4_1", prompt="def f(",
                                  suffix="return 1", max_tokens=4)
    assert info.value.body["param"] == "suffix"
