"""LangChain, unchanged, against generate (gunicorn, SmolLM2-135M-Instruct from MinIO):
`ChatOpenAI(...).bind_tools(...)` and `.with_structured_output(...)`.

`langchain-openai` is a test dependency only (requirements.txt).
"""
from __future__ import annotations

from typing import Literal

import pytest
from langchain_core.messages import HumanMessage, ToolMessage
from langchain_openai import ChatOpenAI
from pydantic import BaseModel, Field

from scripts import procs, run
from tests.support.models import upload_function_models

READY_S = 180
MODEL = "smollm2-135m-instruct-q4_1"


class City(BaseModel):
    """A city and the country it is in."""
    name: str = Field(max_length=20, description="the city")
    country: str = Field(max_length=20, description="its country")


class GetWeather(BaseModel):
    """Get the current weather in a city."""
    city: str = Field(max_length=20)
    unit: Literal["celsius", "fahrenheit"]


@pytest.fixture(scope="module")
def chat(minio, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("langchain")
    upload_function_models(minio)
    env = run.function_env("generate", run.FUNCTIONS["generate"][2], minio, None, False, "")
    env.update(MODEL_CACHE_DIR=str(tmp / "cache"), N_THREADS="2", API_KEYS="lc-key")
    server = procs.gunicorn_server("generate", procs.free_port(), env=env,
                                   log_path=tmp / "generate.log").start()
    try:
        server.wait_ready(READY_S)
        yield ChatOpenAI(model=MODEL, base_url=f"{server.url}/v1", api_key="lc-key",
                         temperature=0, max_tokens=200, max_retries=0, timeout=120)
    finally:
        server.stop()


@pytest.mark.parametrize("method", ["json_schema", "function_calling", "json_mode"])
def test_with_structured_output(chat, method):
    structured = chat.with_structured_output(City, method=method)
    prompt = "Paris is in France. Return the city and its country."
    if method == "json_mode":
        prompt += ' Answer in JSON with keys "name" and "country".'
    city = structured.invoke(prompt)
    if method == "json_mode" and city is None:
        pytest.fail("json_mode gave no object")
    assert isinstance(city, City) and city.name and city.country


def test_bind_tools_forced_call_then_the_result(chat):
    llm = chat.bind_tools([GetWeather], tool_choice="GetWeather")
    question = HumanMessage("What is the weather in Oslo, in celsius?")
    answer = llm.invoke([question])
    assert answer.tool_calls and answer.tool_calls[0]["name"] == "GetWeather"
    args = GetWeather(**answer.tool_calls[0]["args"])
    assert args.unit in ("celsius", "fahrenheit")
    follow = chat.invoke([question, answer,
                          ToolMessage("4 C and snowing", tool_call_id=answer.tool_calls[0]["id"])])
    assert isinstance(follow.content, str) and follow.content


def test_bind_tools_streamed(chat):
    llm = chat.bind_tools([GetWeather], tool_choice="required")
    chunks = list(llm.stream("Weather in Rome?"))
    merged = chunks[0]
    for chunk in chunks[1:]:
        merged += chunk
    assert merged.tool_calls and merged.tool_calls[0]["name"] == "GetWeather"
