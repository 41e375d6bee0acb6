"""`make bench-protocol-libs`: the measurement that chose the typed protocol layer's library
(issue 21): msgspec against pydantic v2, both on the index, on what matters to a
scale-to-zero function.

- **import**: a fresh interpreter's ``import <lib>`` minus a bare interpreter's start, median of
  alternated runs (cold start pays it once per pod);
- **declare**: importing a module that declares the chat request's types (class creation, and
  for pydantic its schema build);
- **validate**: one chat completion request body (messages, a tool, a JSON-schema response
  format, 15 scalar parameters) from JSON bytes to a typed object, per request, and the same
  for a body with a wrong type (the error path, 400).

Prints a table; the figures are in docs/architecture.md ("Protocol types").
"""
from __future__ import annotations

import json
import statistics
import subprocess
import sys
import textwrap
import time
import types

RUNS = 15
BODY = {
    "model": "smollm2", "max_tokens": 64, "temperature": 0.7, "top_p": 0.9, "seed": 7,
    "stream": False, "n": 1, "presence_penalty": 0.0, "frequency_penalty": 0.5,
    "stop": ["\n\n"], "logprobs": False, "user": "u1", "parallel_tool_calls": True,
    "messages": [
        {"role": "system", "content": "You are a helpful assistant. " * 8},
        {"role": "user", "content": [{"type": "text", "text": "What is the weather in Oslo?"}]},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "weather", "arguments": "{\"city\": \"Oslo\"}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "4 degrees, rain"},
    ],
    "tools": [{"type": "function", "function": {
        "name": "weather", "description": "Weather of a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                       "required": ["city"]}}}],
    "response_format": {"type": "json_schema", "json_schema": {
        "name": "answer", "strict": True,
        "schema": {"type": "object", "properties": {"text": {"type": "string"}}}}},
}

MSGSPEC_TYPES = textwrap.dedent('''
    from typing import Any, Literal, Union
    import msgspec
    from msgspec import Meta
    from typing import Annotated as A

    class Text(msgspec.Struct, forbid_unknown_fields=True):
        type: Literal["text"]
        text: str

    class Function(msgspec.Struct, forbid_unknown_fields=True):
        name: str
        arguments: str

    class ToolCall(msgspec.Struct, forbid_unknown_fields=True):
        id: str
        function: Function
        type: Literal["function"] = "function"

    class Message(msgspec.Struct, forbid_unknown_fields=True):
        role: Literal["system", "developer", "user", "assistant", "tool"]
        content: Union[str, list[Text], None] = None
        tool_calls: list[ToolCall] | None = None
        tool_call_id: str | None = None
        name: str | None = None

    class FunctionDef(msgspec.Struct, forbid_unknown_fields=True):
        name: str
        description: str | None = None
        parameters: dict[str, Any] | None = None
        strict: bool | None = None

    class Tool(msgspec.Struct, forbid_unknown_fields=True):
        type: Literal["function"]
        function: FunctionDef

    class JSONSchema(msgspec.Struct, forbid_unknown_fields=True):
        name: str
        schema: dict[str, Any] | None = None
        strict: bool | None = None
        description: str | None = None

    class ResponseFormat(msgspec.Struct, forbid_unknown_fields=True):
        type: Literal["text", "json_object", "json_schema"]
        json_schema: JSONSchema | None = None

    class ChatRequest(msgspec.Struct, forbid_unknown_fields=True):
        messages: A[list[Message], Meta(min_length=1)]
        model: str | None = None
        max_tokens: A[int, Meta(ge=1)] | None = None
        temperature: A[float, Meta(ge=0, le=2)] | None = None
        top_p: A[float, Meta(ge=0, le=1)] | None = None
        seed: int | None = None
        stream: bool | None = None
        n: A[int, Meta(ge=1)] | None = None
        presence_penalty: A[float, Meta(ge=-2, le=2)] | None = None
        frequency_penalty: A[float, Meta(ge=-2, le=2)] | None = None
        stop: Union[str, A[list[str], Meta(max_length=4)], None] = None
        logprobs: bool | None = None
        top_logprobs: A[int, Meta(ge=0, le=20)] | None = None
        user: str | None = None
        parallel_tool_calls: bool | None = None
        tools: list[Tool] | None = None
        tool_choice: Any = None
        response_format: ResponseFormat | None = None
        logit_bias: dict[str, float] | None = None

    decoder = msgspec.json.Decoder(ChatRequest)

    def parse(raw):
        return decoder.decode(raw)
''')

PYDANTIC_TYPES = textwrap.dedent('''
    from typing import Any, Literal, Union
    from typing import Annotated as A
    from pydantic import BaseModel, ConfigDict, Field

    class Strict(BaseModel):
        model_config = ConfigDict(extra="forbid", strict=True)

    class Text(Strict):
        type: Literal["text"]
        text: str

    class Function(Strict):
        name: str
        arguments: str

    class ToolCall(Strict):
        id: str
        function: Function
        type: Literal["function"] = "function"

    class Message(Strict):
        role: Literal["system", "developer", "user", "assistant", "tool"]
        content: Union[str, list[Text], None] = None
        tool_calls: list[ToolCall] | None = None
        tool_call_id: str | None = None
        name: str | None = None

    class FunctionDef(Strict):
        name: str
        description: str | None = None
        parameters: dict[str, Any] | None = None
        strict: bool | None = None

    class Tool(Strict):
        type: Literal["function"]
        function: FunctionDef

    class JSONSchema(Strict):
        name: str
        schema_: dict[str, Any] | None = Field(None, alias="schema")
        strict: bool | None = None
        description: str | None = None

    class ResponseFormat(Strict):
        type: Literal["text", "json_object", "json_schema"]
        json_schema: JSONSchema | None = None

    class ChatRequest(Strict):
        messages: A[list[Message], Field(min_length=1)]
        model: str | None = None
        max_tokens: A[int, Field(ge=1)] | None = None
        temperature: A[float, Field(ge=0, le=2)] | None = None
        top_p: A[float, Field(ge=0, le=1)] | None = None
        seed: int | None = None
        stream: bool | None = None
        n: A[int, Field(ge=1)] | None = None
        presence_penalty: A[float, Field(ge=-2, le=2)] | None = None
        frequency_penalty: A[float, Field(ge=-2, le=2)] | None = None
        stop: Union[str, A[list[str], Field(max_length=4)], None] = None
        logprobs: bool | None = None
        top_logprobs: A[int, Field(ge=0, le=20)] | None = None
        user: str | None = None
        parallel_tool_calls: bool | None = None
        tools: list[Tool] | None = None
        tool_choice: Any = None
        response_format: ResponseFormat | None = None
        logit_bias: dict[str, float] | None = None

    def parse(raw):
        return ChatRequest.model_validate_json(raw)
''')


def subprocess_s(code: str) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True)
    return time.perf_counter() - t0


def startup_costs() -> dict[str, dict[str, float]]:
    """Median seconds over RUNS alternated fresh interpreters, minus the bare start."""
    cases = {"bare": "pass", "msgspec import": "import msgspec",
             "pydantic import": "import pydantic",
             "msgspec import+declare": MSGSPEC_TYPES,
             "pydantic import+declare": PYDANTIC_TYPES}
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(RUNS):
        for name, code in cases.items():
            times[name].append(subprocess_s(code))
    bare = statistics.median(times.pop("bare"))
    return {name: {"median_ms": (statistics.median(t) - bare) * 1e3} for name, t in times.items()}


def per_request(code: str, raw: bytes, bad: bytes, n: int = 20000) -> tuple[float, float]:
    module = types.ModuleType(f"protocol_{abs(hash(code))}")
    sys.modules[module.__name__] = module  # the libraries resolve annotations in it
    exec(code, module.__dict__)
    parse = module.parse
    parse(raw)
    t0 = time.perf_counter()
    for _ in range(n):
        parse(raw)
    good = (time.perf_counter() - t0) / n
    t0 = time.perf_counter()
    for _ in range(n // 10):
        try:
            parse(bad)
        except Exception:
            pass
    err = (time.perf_counter() - t0) / (n // 10)
    return good * 1e6, err * 1e6


def main() -> int:
    raw = json.dumps(BODY).encode()
    bad = json.dumps({**BODY, "max_tokens": "64"}).encode()
    start = startup_costs()
    rows = [("msgspec", MSGSPEC_TYPES), ("pydantic", PYDANTIC_TYPES)]
    print(f"{'library':10} {'import ms':>10} {'import+declare ms':>18} "
          f"{'validate us':>12} {'400 path us':>12}")
    for name, code in rows:
        good, err = per_request(code, raw, bad)
        print(f"{name:10} {start[name + ' import']['median_ms']:10.1f} "
              f"{start[name + ' import+declare']['median_ms']:18.1f} {good:12.1f} {err:12.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
