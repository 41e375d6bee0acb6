"""Structured outputs and tools: what the output must look like, as a JSON schema.

- ``response_format`` ``json_object``: any JSON object; ``json_schema``: JSON valid against the
  schema. The schema is checked here (schema_rules: every keyword that constrains instances is
  enforced, or the request is a 400 naming it and its JSON pointer) and compiled on the request
  thread with the model's tokenizer (constraint.py); the scheduler masks each slot's logits
  with it (llguidance), so ``finish_reason`` ``stop`` means the JSON is complete.
- ``tools`` with ``tool_choice`` ``"required"`` or a named function: the output is forced to
  ``{"name": <a given function>, "arguments": <valid against its parameters>}``, answered as
  OpenAI's ``tool_calls`` with ``finish_reason: "tool_calls"``. ``"auto"``: the tools are
  described in the system message and the model answers freely; an answer that is exactly
  such a call is returned as a tool call, anything else as text (a model whose chat template
  has no tool support, as SmolLM2's, decides by itself). ``"none"``: no call, tools unused.
- Every constrained answer ending ``stop`` is validated again with jsonschema (the schema's
  dialect, its FORMAT_CHECKER) before it is sent: one that fails is never a 200
  (:class:`OutputInvalid`, a 500 naming the violation); a cut-short one is ``length``.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from llmfn.errors import APIError, InvalidRequest

from . import protocol, schema_rules


class OutputInvalid(APIError):
    """A constrained answer that does not validate against its schema (an engine fault: the
    client gets an error, never a 200 that breaks the schema)."""
    status = 500
    type = "server_error"
    code = "structured_output_invalid"


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    parameters: dict


@dataclass
class Output:
    """What the answer must be: ``kind`` text | json_object | json_schema | tool_call."""
    kind: str = "text"
    schema: dict | bool | None = None  # what the output is constrained to (None: free text)
    param: str = "response_format"  # the request parameter the schema came from
    grammar: object = None  # its compiled constraint.Grammar (set by the API with the model)
    tools: list[Tool] = field(default_factory=list)
    tool_choice: str = "none"  # none | auto | required

    @property
    def may_call(self) -> bool:
        return self.tool_choice in ("auto", "required") and bool(self.tools)


def parse(req: protocol.ChatCompletionRequest) -> Output:
    """The ``response_format``, ``tools`` and ``tool_choice`` of a chat request."""
    tools = _tools(req.tools or [])
    choice = _tool_choice(req.tool_choice, tools)
    fmt = req.response_format
    if choice in ("required",) or choice.startswith("function:"):
        if not isinstance(fmt, (type(None), protocol.ResponseFormatText)):
            raise InvalidRequest("'response_format' cannot be combined with a forced tool "
                                 "call.", param="response_format")
        chosen = [t for t in tools if choice == "required" or choice == f"function:{t.name}"]
        schema = {"anyOf": [_call_schema(t) for t in chosen], **_shared_defs(chosen)}
        return Output("tool_call", schema, "tools", tools=tools, tool_choice="required")
    out = Output(tools=tools, tool_choice=choice)
    if isinstance(fmt, protocol.ResponseFormatJSONObject):
        out.kind, out.schema = "json_object", {"type": "object"}
    elif isinstance(fmt, protocol.ResponseFormatJSONSchema):
        schema_rules.check(fmt.json_schema.schema, "response_format")
        out.kind, out.schema = "json_schema", fmt.json_schema.schema
    return out


def _tools(raw: list[protocol.Tool]) -> list[Tool]:
    tools = []
    for i, tool in enumerate(raw):
        params = tool.function.parameters or {"type": "object", "properties": {}}
        schema_rules.check(params, f"tools[{i}]")
        tools.append(Tool(tool.function.name, tool.function.description or "", params))
    return tools


def _tool_choice(raw: str | protocol.NamedToolChoice | None, tools: list[Tool]) -> str:
    if raw is None:
        return "auto" if tools else "none"
    if isinstance(raw, str):
        if raw != "none" and not tools:
            raise InvalidRequest(f"'tool_choice' {raw!r} needs 'tools'.", param="tool_choice")
        return raw
    if raw.function.name not in {t.name for t in tools}:
        raise InvalidRequest("'tool_choice' must be none, auto, required or {\"type\": "
                             "\"function\", \"function\": {\"name\": <one of tools>}}.",
                             param="tool_choice")
    return f"function:{raw.function.name}"


def _shared_defs(tools: list[Tool]) -> dict:
    """The tools' ``$defs``/``definitions`` at the root of the call schema, where their
    ``#/$defs/...`` references point once the parameters sit inside it."""
    shared: dict = {}
    for tool in tools:
        for key in ("$defs", "definitions"):
            for name, sub in (_closed(tool.parameters).get(key) or {}).items():
                if shared.setdefault(key, {}).setdefault(name, sub) != sub:
                    raise InvalidRequest(f"'tools': two tools define '#/{key}/{name}' "
                                         "differently; force one tool (named tool_choice).",
                                         param="tools")
    return shared


def _closed(node, has_all_of: bool | None = None):
    """Tool arguments as a call needs them: an object schema that lists ``properties`` and
    says nothing of ``additionalProperties``/``patternProperties`` takes no others (as
    llama.cpp's converter and XGrammar do; a small model otherwise rambles into made-up
    arguments). Narrower than the schema, never wider; left alone if any ``allOf`` (whose
    branches closed one by one would exclude each other's properties)."""
    if has_all_of is None:
        has_all_of = '"allOf"' in json.dumps(node)
    if has_all_of:
        return node
    if isinstance(node, list):
        return [_closed(x, False) for x in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in ("properties", "$defs", "definitions", "patternProperties") and isinstance(
                value, dict):
            out[key] = {k: _closed(v, False) for k, v in value.items()}
        elif key in ("items", "additionalProperties", "anyOf", "oneOf", "prefixItems"):
            out[key] = _closed(value, False)
        else:
            out[key] = value
    if (isinstance(out.get("properties"), dict) and "additionalProperties" not in out
            and "patternProperties" not in out):
        out["additionalProperties"] = False
    return out


def _call_schema(tool: Tool) -> dict:
    return {"type": "object", "properties": {"name": {"const": tool.name},
                                             "arguments": _closed(tool.parameters)},
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


def message_tool_calls(raw: list[protocol.ToolCall], where: str) -> list[dict]:
    """An assistant message's ``tool_calls`` as sent back in a conversation (arguments must
    be JSON text)."""
    calls = []
    for i, call in enumerate(raw):
        try:
            json.loads(call.function.arguments)
        except ValueError:
            raise InvalidRequest(f"'{where}[{i}]' must be {{id, type: function, function: "
                                 "{name, arguments: JSON text}}.", param=f"{where}[{i}]") from None
        calls.append({"id": call.id, "type": "function",
                      "function": {"name": call.function.name,
                                   "arguments": call.function.arguments}})
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
