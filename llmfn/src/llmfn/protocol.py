"""The typed protocol layer: requests, responses and stream chunks declared once, as types.

Each function declares its shapes in its ``function/protocol.py`` as :class:`Request` (a body
a client sends: unknown keys are a 400) and :class:`Model` (what we send: responses, chunks,
events) subclasses. From those one declaration:

- :func:`decode` validates a request body (the parsed JSON object) into the typed request, or
  raises :class:`~llmfn.errors.InvalidRequest` in OpenAI's wording with ``param`` naming the
  field (``messages[0].role``);
- :func:`encode` / :func:`to_builtins` write responses;
- ``llmfn.openapi`` writes the OpenAPI 3.1 document (:func:`schemas`).

The library is msgspec, chosen by measurement (``bench/protocol_libs.py``,
docs/architecture.md "Protocol types"): its import and declarations cost about a quarter of
pydantic v2's at cold start, and it validates a chat request about 7x faster.

A field's constraints go in ``Annotated[T, Meta(...)]`` (:data:`Meta`); ``Meta(description=...)``
and a class's docstring become the document's descriptions. Checks that span fields (``best_of``
>= ``n``) stay in code after :func:`decode`, raising ``InvalidRequest`` as before.
"""
from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any, TypeVar

import msgspec
import msgspec.inspect
from msgspec import UNSET, Meta, UnsetType, field

from .errors import InvalidRequest

__all__ = ["Request", "Model", "Meta", "UNSET", "UnsetType", "field", "decode", "encode",
           "to_builtins", "schemas", "is_set"]

T = TypeVar("T")


class Request(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True, kw_only=True):
    """A request body: keys it does not declare are a 400 (OpenAI's "Unrecognized request
    argument supplied"). Optional fields default to :data:`UNSET` or a value; ``None`` is what a
    client sends as ``null``."""


class Model(msgspec.Struct, kw_only=True):
    """A shape we send (a response, a stream chunk, an event's data). Fields left
    :data:`UNSET` are not written; every other field is, its default included (a constant such
    as ``object: Literal["list"] = "list"`` is part of the shape)."""


def is_set(value: Any) -> bool:
    """False for a field the client left out (:data:`UNSET`) or sent as null."""
    return value is not UNSET and value is not None


def decode(kind: type[T], body: Any, *, at: str = "") -> T:
    """``body`` (a parsed JSON value) as ``kind``, or InvalidRequest naming the field.

    ``at`` prefixes ``param`` when ``body`` is a part of the request (``messages[0]``)."""
    try:
        return msgspec.convert(body, kind, strict=True)
    except msgspec.ValidationError as err:
        message, param = explain(str(err), body)
        raise InvalidRequest(message, param=_join(at, param) or None) from None


def encode(value: Any) -> bytes:
    """JSON bytes of a :class:`Model` (or anything msgspec writes)."""
    return msgspec.json.encode(value)


def to_builtins(value: Any) -> Any:
    """A :class:`Model` as dicts and lists (for Flask's ``jsonify``, or a CloudEvent's data)."""
    return msgspec.to_builtins(value)


def schemas(kinds: Iterable[type], ref_template: str = "#/components/schemas/{name}"
            ) -> tuple[tuple[dict[str, Any], ...], dict[str, Any]]:
    """JSON Schemas (2020-12, as OpenAPI 3.1 takes them) of ``kinds``: one per kind (mostly a
    ``$ref``) and the named components they refer to.

    A :class:`Model` always writes a field that has a default (only :data:`UNSET` ones are left
    out), so its schema lists those as required too."""
    kinds = list(kinds)
    refs, components = msgspec.json.schema_components(kinds, ref_template=ref_template)
    for cls in _structs(msgspec.inspect.multi_type_info(kinds)):
        schema = components.get(cls.__name__)
        if schema is None or not issubclass(cls, Model):
            continue
        written = [f.encode_name for f in msgspec.structs.fields(cls) if f.default is not UNSET]
        schema["required"] = [name for name in schema.get("properties", {}) if name in written]
    return refs, components


def _structs(infos: Iterable[Any], seen: set[type] | None = None) -> list[type]:
    """The Struct classes in msgspec type infos, nested ones included."""
    seen = set() if seen is None else seen
    out = []
    for info in infos:
        if isinstance(info, msgspec.inspect.StructType):
            if info.cls in seen:
                continue
            seen.add(info.cls)
            out.append(info.cls)
            out += _structs([f.type for f in info.fields], seen)
        else:
            nested = [getattr(info, name) for name in ("item_type", "key_type", "value_type")
                      if isinstance(getattr(info, name, None), msgspec.inspect.Type)]
            nested += list(getattr(info, "types", ()) or ())
            nested += list(getattr(info, "item_types", ()) or ())
            out += _structs([t for t in nested if isinstance(t, msgspec.inspect.Type)], seen)
    return out


# -- msgspec's messages in OpenAI's words ---------------------------------------------------------
_AT = re.compile(r" - at `\$(?P<path>[^`]*)`$")
_TYPE_NAMES = {"int": "an integer", "float": "a number", "str": "a string", "bool": "a boolean",
               "array": "an array", "object": "an object", "null": "null"}


def explain(error: str, body: Any) -> tuple[str, str]:
    """(message, param) for msgspec's ValidationError text about ``body``."""
    match = _AT.search(error)
    path = match.group("path").lstrip(".") if match else ""
    what = error[:match.start()] if match else error
    found = re.fullmatch(r"Object contains unknown field `(?P<name>[^`]+)`", what)
    if found:
        name = _join(path, found["name"])
        return f"Unrecognized request argument supplied: {name}", name
    found = re.fullmatch(r"Object missing required field `(?P<name>[^`]+)`", what)
    if found:
        name = _join(path, found["name"])
        return f"Missing required parameter: '{name}'.", name
    value = _value_at(body, path)
    found = re.fullmatch(r"Expected `(?P<want>[^`]+)`, got `(?P<got>[^`]+)`", what)
    if found:
        if value is None:
            return f"'{path}' must not be null.", path
        return (f"'{path}' must be {_json_names(found['want'])}, got "
                f"{_TYPE_NAMES.get(found['got'], found['got'])}.", path)
    found = re.fullmatch(r"Expected `[^`]+` (?P<op>[<>]=?) (?P<bound>\S+)", what)
    if found:
        return f"'{path}' must be {found['op']} {_number(found['bound'])}, got {value}.", path
    found = re.fullmatch(r"Expected `(?P<kind>[^`]+)` of length (?P<op>[<>]=?) (?P<n>\d+)", what)
    if found:
        items = "characters" if found["kind"] == "str" else "items"
        if found["op"] == ">=" and found["n"] == "1":
            return f"'{path}' must not be empty.", path
        return f"'{path}' must have {found['op']} {found['n']} {items}.", path
    found = re.fullmatch(r"Invalid enum value (?P<value>.+)", what)
    if found:
        return f"'{path}' may not be {found['value']}.", path
    return f"'{path or 'body'}': {what[:1].lower()}{what[1:]}.", path


def _json_names(want: str) -> str:
    """``int | null`` -> "an integer": null is never what the client got wrong."""
    names = [_TYPE_NAMES.get(part.strip(), part.strip()) for part in want.split("|")
             if part.strip() != "null"]
    return " or ".join(dict.fromkeys(names)) or "null"


def _number(text: str) -> str:
    try:
        value = float(text)
    except ValueError:
        return text
    return str(int(value)) if value.is_integer() else text


def _join(head: str, tail: str) -> str:
    if not head:
        return tail
    if not tail:
        return head
    return head + tail if tail.startswith("[") else f"{head}.{tail}"


_STEP = re.compile(r"\.([^.\[]+)|\[(\d+)\]|^([^.\[]+)")


def _value_at(body: Any, path: str) -> Any:
    """The value at ``messages[0].role`` in ``body`` (None when absent)."""
    value = body
    for key, index, first in _STEP.findall(path):
        try:
            value = value[int(index)] if index else value[key or first]
        except (KeyError, IndexError, TypeError, ValueError):
            return None
    return value
