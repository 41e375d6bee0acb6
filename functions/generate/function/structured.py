"""Structured outputs and tools: what the output must look like, as a llama.cpp grammar.

- ``response_format`` ``json_object``: any JSON object; ``json_schema``: JSON valid against the
  schema. The grammar comes from llama-cpp-python's JSON-schema converter, after a check that
  the schema uses only keywords it turns into constraints (:data:`SUPPORTED`); anything else is
  a 400 naming ``response_format``. Bounds the schema gives (``maxLength``, ``maxItems``,
  ``enum``...) bound the output.
- ``tools`` with ``tool_choice`` ``"required"`` or a named function: the grammar forces
  ``{"name": <a given function>, "arguments": <valid against its parameters>}``, answered as
  OpenAI's ``tool_calls`` with ``finish_reason: "tool_calls"``. ``"auto"``: the tools are
  described in the system message and the model answers freely; an answer that is exactly
  such a call is returned as a tool call, anything else as text (a model whose chat template
  has no tool support, as SmolLM2's, decides by itself). ``"none"``: no call, tools unused.
- Whenever a grammar applies, the output ends only where the grammar is complete, so a
  ``finish_reason`` of ``stop`` (or ``tool_calls``) means it parses and validates.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

from llama_cpp.llama_grammar import json_schema_to_gbnf

from llmfn.errors import InvalidRequest

# JSON Schema keywords the converter enforces, and annotations it may ignore.
SUPPORTED = {"type", "properties", "required", "additionalProperties", "items", "prefixItems",
             "enum", "const", "anyOf", "oneOf", "allOf", "$ref", "$defs", "definitions",
             "minItems", "maxItems", "minLength", "maxLength", "pattern", "format",
             "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"}
ANNOTATIONS = {"title", "description", "default", "examples", "$schema", "$id", "$comment",
               "nullable", "deprecated", "readOnly", "writeOnly"}
FORMATS = {"date", "time", "date-time", "uuid"}
MAX_TOOLS = 64


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    parameters: dict


@dataclass
class Output:
    """What the answer must be: ``kind`` text | json_object | json_schema | tool_call."""
    kind: str = "text"
    grammar: str | None = None
    schema: dict | None = None
    tools: list[Tool] = field(default_factory=list)
    tool_choice: str = "none"  # none | auto | required

    @property
    def may_call(self) -> bool:
        return self.tool_choice in ("auto", "required") and bool(self.tools)


def parse(body: dict) -> Output:
    """The ``response_format``, ``tools`` and ``tool_choice`` of a chat request."""
    tools = _tools(body.get("tools"))
    choice = _tool_choice(body.get("tool_choice"), tools)
    fmt = body.get("response_format")
    if choice in ("required",) or choice.startswith("function:"):
        if fmt not in (None, {"type": "text"}):
            raise InvalidRequest("'response_format' cannot be combined with a forced tool "
                                 "call.", param="response_format")
        chosen = [t for t in tools if choice == "required" or choice == f"function:{t.name}"]
        schema = {"anyOf": [_call_schema(t) for t in chosen]}
        return Output("tool_call", _grammar(schema, "tools"), schema, tools, "required")
    out = Output(tools=tools, tool_choice=choice)
    if fmt is None:
        return out
    if not isinstance(fmt, dict) or fmt.get("type") not in ("text", "json_object",
                                                             "json_schema"):
        raise InvalidRequest("'response_format' must be {\"type\": \"text\" | \"json_object\" "
                             "| \"json_schema\"}.", param="response_format")
    if fmt["type"] == "json_object":
        out.kind, out.schema = "json_object", {"type": "object"}
        out.grammar = _grammar(out.schema, "response_format")
    elif fmt["type"] == "json_schema":
        spec = fmt.get("json_schema")
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
            raise InvalidRequest("'response_format.json_schema' must be {name, schema, "
                                 "strict}.", param="response_format")
        schema = spec.get("schema", {})
        if not isinstance(schema, dict):
            raise InvalidRequest("'response_format.json_schema.schema' must be an object.",
                                 param="response_format")
        check_schema(schema, "response_format")
        out.kind, out.schema = "json_schema", schema
        out.grammar = _grammar(schema, "response_format")
    return out


def _tools(raw) -> list[Tool]:
    if raw is None:
        return []
    if not isinstance(raw, list) or len(raw) > MAX_TOOLS:
        raise InvalidRequest(f"'tools' must be an array of up to {MAX_TOOLS} tools.",
                             param="tools")
    tools = []
    for i, tool in enumerate(raw):
        fn = tool.get("function") if isinstance(tool, dict) else None
        if not (isinstance(tool, dict) and tool.get("type") == "function"
                and isinstance(fn, dict) and isinstance(fn.get("name"), str) and fn["name"]):
            raise InvalidRequest(f"'tools[{i}]' must be {{\"type\": \"function\", \"function\": "
                                 "{name, description, parameters}}.", param=f"tools[{i}]")
        params = fn.get("parameters") or {"type": "object", "properties": {}}
        if not isinstance(params, dict):
            raise InvalidRequest(f"'tools[{i}].function.parameters' must be a JSON schema.",
                                 param=f"tools[{i}]")
        check_schema(params, f"tools[{i}]")
        tools.append(Tool(fn["name"], str(fn.get("description") or ""), params))
    return tools


def _tool_choice(raw, tools: list[Tool]) -> str:
    if raw is None:
        return "auto" if tools else "none"
    if raw in ("none", "auto", "required"):
        if raw != "none" and not tools:
            raise InvalidRequest(f"'tool_choice' {raw!r} needs 'tools'.", param="tool_choice")
        return raw
    name = raw.get("function", {}).get("name") if isinstance(raw, dict) else None
    if not isinstance(name, str) or name not in {t.name for t in tools}:
        raise InvalidRequest("'tool_choice' must be none, auto, required or {\"type\": "
                             "\"function\", \"function\": {\"name\": <one of tools>}}.",
                             param="tool_choice")
    return f"function:{name}"


def check_schema(schema, param: str, path: str = "#") -> None:
    """400 naming ``param`` for a keyword the grammar would not enforce."""
    if isinstance(schema, bool):
        return
    if not isinstance(schema, dict):
        raise InvalidRequest(f"'{param}': the schema at {path} must be an object.", param=param)
    for key, value in schema.items():
        if key not in SUPPORTED and key not in ANNOTATIONS:
            raise InvalidRequest(f"'{param}': the JSON Schema keyword '{key}' (at {path}) is not "
                                 "supported.", param=param)
        if key == "format" and value not in FORMATS:
            raise InvalidRequest(f"'{param}': format '{value}' (at {path}) is not supported; "
                                 f"supported: {sorted(FORMATS)}.", param=param)
        if key in ("properties", "$defs", "definitions") and isinstance(value, dict):
            for name, sub in value.items():
                check_schema(sub, param, f"{path}/{key}/{name}")
        elif key in ("anyOf", "oneOf", "allOf", "prefixItems") and isinstance(value, list):
            for i, sub in enumerate(value):
                check_schema(sub, param, f"{path}/{key}/{i}")
        elif key in ("items", "additionalProperties") and isinstance(value, (dict, bool)):
            check_schema(value, param, f"{path}/{key}")


# The converter's string character allows raw control characters, which JSON does not.
_LOOSE_CHAR = 'char ::= [^"\\\\]'
_JSON_CHAR = 'char ::= [^"\\\\\\x7F\\x00-\\x1F]'


def _grammar(schema: dict, param: str) -> str:
    try:
        grammar = json_schema_to_gbnf(json.dumps(schema))
    except (ValueError, KeyError, TypeError, AssertionError, RecursionError) as err:
        raise InvalidRequest(f"'{param}' cannot be turned into a grammar: {err}",
                             param=param) from None
    return grammar.replace(_LOOSE_CHAR, _JSON_CHAR)


def _call_schema(tool: Tool) -> dict:
    return {"type": "object", "properties": {"name": {"const": tool.name},
                                             "arguments": tool.parameters},
            "required": ["name", "arguments"], "additionalProperties": False}


def tools_prompt(output: Output) -> str:
    """The system text that tells the model which functions it may call, and how."""
    listed = [{"name": t.name, "description": t.description, "parameters": t.parameters}
              for t in output.tools]
    return ("You can call these functions:\n" + json.dumps(listed) + "\nTo call one, answer "
            "with only a JSON object: {\"name\": <function name>, \"arguments\": {...}}.")


def render_messages(messages: list[dict], output: Output) -> list[dict]:
    """Messages for a chat template without tool support: tool calls and results as text,
    the tools in the system message."""
    rendered = []
    for msg in messages:
        content = msg["content"]
        if msg.get("tool_calls"):
            calls = [{"name": c["function"]["name"],
                      "arguments": json.loads(c["function"]["arguments"])}
                     for c in msg["tool_calls"]]
            content = (content + "\n" if content else "") + json.dumps(
                calls[0] if len(calls) == 1 else calls)
        if msg["role"] == "tool":
            content = f"Result of {msg['tool_call_id']}: {content}"
        rendered.append({"role": msg["role"], "content": content})
    if output.may_call:
        text = tools_prompt(output)
        if rendered and rendered[0]["role"] == "system":
            rendered[0] = {"role": "system", "content": rendered[0]["content"] + "\n\n" + text}
        else:
            rendered.insert(0, {"role": "system", "content": text})
    return rendered


def message_tool_calls(raw, where: str) -> list[dict]:
    """An assistant message's ``tool_calls`` as sent back in a conversation."""
    if not isinstance(raw, list):
        raise InvalidRequest(f"'{where}' must be an array.", param=where)
    calls = []
    for i, call in enumerate(raw):
        fn = call.get("function") if isinstance(call, dict) else None
        try:
            json.loads(fn["arguments"])
            ok = isinstance(fn["name"], str) and isinstance(call.get("id"), str)
        except (TypeError, KeyError, ValueError):
            ok = False
        if not ok:
            raise InvalidRequest(f"'{where}[{i}]' must be {{id, type: function, function: "
                                 "{name, arguments: JSON text}}.", param=f"{where}[{i}]")
        calls.append({"id": call["id"], "type": "function",
                      "function": {"name": fn["name"], "arguments": fn["arguments"]}})
    return calls


def tool_calls(text: str, output: Output, call_key: str) -> list[dict] | None:
    """The model's answer as OpenAI ``tool_calls`` if it is a call of one of the tools."""
    if not output.may_call:
        return None
    try:
        doc = json.loads(text)
    except ValueError:
        return None
    names = {t.name for t in output.tools}
    if not (isinstance(doc, dict) and doc.get("name") in names
            and isinstance(doc.get("arguments"), dict)):
        return None
    call_id = "call_" + hashlib.sha256(f"{call_key}\x1f0".encode()).hexdigest()[:24]
    return [{"id": call_id, "type": "function",
             "function": {"name": doc["name"], "arguments": json.dumps(doc["arguments"])}}]
