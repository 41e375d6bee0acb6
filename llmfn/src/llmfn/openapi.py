"""Each function's OpenAPI 3.1 document, built from its protocol types.

A function's ``function/protocol.py`` lists its routes as :class:`Operation` s (``OPERATIONS``)
whose bodies are protocol types (``llmfn.protocol``). :func:`document` adds the path groups the
base app gives every function (:data:`GROUPS`: ``base`` for health, /metrics, /openapi.json and
/docs; ``models`` for /v1/models; ``event-requests`` for ``POST /``), the shared components (the
OpenAI error shape and the error responses, the ``Retry-After`` header, ``bearerAuth``), and the
JSON Schemas of every type named (``protocol.schemas``). Nothing of it is written twice: the
types are the validation and the document. The base app serves the result at
``GET /openapi.json`` (:func:`attach`); each function's tests hold it against the app's routes.
"""
from __future__ import annotations

import threading
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from flask import Flask

from . import protocol
from .shapes import Error, ModelCard, ModelList, StructuredCloudEvent

EXTENSION_KEY = "llmfn.openapi"
"""``app.extensions`` key of the document the base app serves at ``/openapi.json``."""
VERSION = "0.1.0"
SSE = ("the SSE stream of its chunks (`data: {chunk}` events, `: keep-alive` comments, "
       "`data: [DONE]` at the end)")

HTML = {"text/html": {"type": "string"}}
"""``content`` of an operation that answers an HTML page."""
TEXT = {"text/plain": {"type": "string"}}
"""``content`` of an operation that answers plain text."""


@dataclass(frozen=True)
class Param:
    """A query, header or path parameter (a string unless ``schema`` says otherwise)."""
    name: str
    where: str = "query"
    description: str = ""
    schema: Mapping[str, Any] = field(default_factory=lambda: {"type": "string"})
    required: bool = False

    def spec(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "in": self.where,
                               "required": self.required or self.where == "path",
                               "schema": dict(self.schema)}
        if self.description:
            out["description"] = self.description
        return out


@dataclass(frozen=True)
class Operation:
    """One route of a function's API, as its document describes it.

    ``request`` is the JSON body's :class:`~llmfn.protocol.Request` type, ``response`` the 200's
    :class:`~llmfn.protocol.Model` type, ``stream`` the type of an SSE ``data:`` chunk when the
    client asks for ``stream: true``. ``public`` routes answer without a bearer key. ``errors``
    are the error statuses the route answers in OpenAI's shape (413/415 are added for a JSON
    body, 500 for every route but a page). ``content`` maps a media type to its JSON Schema for
    a 200 that is not (only) a ``response`` type (:data:`HTML`, :data:`TEXT`).

    The rest is for routes the above does not cover: ``returns`` describes the 200,
    ``parameters`` are its query/header/path parameters, ``event`` (a ``ce-type`` example) makes
    the body a CloudEvent in binary or structured mode (``request``, if given, is its data's
    type), ``headers`` names shared headers of the
    200 (``X-Request-Id``), and ``responses`` are OpenAPI response objects by status that replace
    the generated ones (an error whose meaning is the route's own: :func:`error_response`).
    """
    path: str
    method: str
    operation_id: str
    summary: str
    tags: tuple[str, ...]
    request: type | None = None
    response: type | None = None
    stream: type | None = None
    public: bool = False
    errors: tuple[int, ...] = (400, 401, 429, 503)
    description: str = ""
    content: Mapping[str, Mapping[str, Any]] | None = None
    returns: str = ""
    parameters: tuple[Param, ...] = ()
    event: str = ""
    headers: tuple[str, ...] = ()
    responses: Mapping[int, Mapping[str, Any]] = field(default_factory=dict)
    sse: str = ""
    """What the stream is, when not OpenAI's chunks (:data:`SSE`): another API's events."""

    def types(self) -> list[type]:
        return [t for t in (self.request, self.response, self.stream) if t is not None]


def page(rule: str, operation_id: str = "playground", summary: str = "HTML playground"
         ) -> Operation:
    """The operation of a function's HTML page (its playground, audit's dashboard)."""
    return Operation(rule, "get", operation_id, summary, ("docs",), public=True, errors=(),
                     content=HTML, returns="an HTML page")


# -- shared components ----------------------------------------------------------------------------
_ERROR_RESPONSES = {
    400: ("BadRequest", "invalid JSON, a wrong type or value (`param` names it), or over the "
          "context length (`code: context_length_exceeded`)"),
    401: ("Unauthorized", "`API_KEYS`/`API_KEYS_FILE` set and no or a wrong `Authorization: "
          "Bearer` (`code: invalid_api_key`)"),
    404: ("NotFound", "unknown model (`code: model_not_found`)"),
    413: ("RequestTooLarge", "body over `MAX_REQUEST_BYTES` (`code: request_too_large`)"),
    415: ("UnsupportedMediaType", "body not `application/json` (`code: unsupported_media_type`)"),
    429: ("TooManyRequests", "queue full, or a key's concurrent requests over "
          "`MAX_CONCURRENT_PER_KEY`"),
    500: ("ServerError", "unexpected error (`code: internal_error`; the traceback is logged, "
          "never sent)"),
    503: ("Unavailable", "not ready yet (`model_not_ready`: downloading, loading, no database) "
          "or shutting down"),
}
_RETRY = (429, 503)
_HEADERS = {
    "Retry-After": ("RetryAfter", {"description": "seconds to wait before retrying",
                                   "schema": {"type": "string", "pattern": "^[0-9]+$"}}),
    "X-Request-Id": ("XRequestId", {"description": "the id of the request's CloudEvent",
                                    "schema": {"type": "string"}}),
}
_SECURITY = {"bearerAuth": {"type": "http", "scheme": "bearer",
                            "description": "Only when `API_KEYS` or `API_KEYS_FILE` is set."}}


def _schema_ref(kind: type) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{kind.__name__}"}


def _header_ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/headers/{_HEADERS[name][0]}"}


def error_response(description: str, status: int = 400, shape: type | None = None
                   ) -> dict[str, Any]:
    """An error response in OpenAI's shape whose ``description`` is the route's own; or in the
    ``shape`` type's (a type of the route's operation: routes answering their errors in another
    API's shape, ``llmfn.errors.shape_errors``)."""
    out: dict[str, Any] = {"description": description, "content": {
        "application/json": {"schema": _schema_ref(shape or Error)}}}
    if status in _RETRY:
        out["headers"] = {"Retry-After": _header_ref("Retry-After")}
    return out


def event_parameters(example_type: str, *, correlation: bool = False) -> tuple[Param, ...]:
    """The ``ce-*`` headers of a CloudEvent in binary mode (all optional: structured mode has
    them in the body)."""
    names = ["ce-specversion", "ce-id", "ce-source", "ce-type", "ce-time"]
    if correlation:
        names.append("ce-correlationid")
    out = []
    for name in names:
        schema: dict[str, Any] = {"type": "string"}
        if name == "ce-specversion":
            schema["enum"] = ["1.0"]
        out.append(Param(name, "header", f"e.g. `{example_type}`" if name == "ce-type" else "",
                         schema))
    return tuple(out)


# -- the shared path groups -----------------------------------------------------------------------
def _plain(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"text/plain": {"schema": {"type": "string"}}}}


GROUPS: dict[str, tuple[Operation, ...]] = {
    "base": (
        Operation("/health/liveness", "get", "liveness", "Liveness probe", ("health",),
                  public=True, errors=(), content=TEXT, returns="alive",
                  description="200 while the process can serve or recover; 500 only when it "
                  "cannot (the model failed to load for good), so the pod restarts.",
                  responses={500: _plain("the reason the process cannot recover")}),
        Operation("/health/readiness", "get", "readiness", "Readiness probe", ("health",),
                  public=True, errors=(), content=TEXT, returns="ready",
                  description="200 once the function can serve; 500 with the reason (such as "
                  "`downloading 41 %`, `loading`, `waiting for the database`, `stopping`) until "
                  "then.", responses={500: _plain("why the function is not ready")}),
        Operation("/metrics", "get", "metrics", "Prometheus metrics", ("health",), public=True,
                  errors=(), content=TEXT, returns="Prometheus text exposition format",
                  responses={500: {}}),
        Operation("/openapi.json", "get", "openapi", "This OpenAPI 3.1 document", ("docs",),
                  public=True, errors=(), returns="the document", responses={500: {}},
                  content={"application/json": {"type": "object",
                                                "required": ["openapi", "paths"]}}),
        Operation("/docs", "get", "docs", "This document rendered as HTML", ("docs",),
                  public=True, errors=(), content=HTML,
                  returns="an HTML page rendering /openapi.json"),
    ),
    "models": (
        Operation("/v1/models", "get", "listModels", "The one model this function serves",
                  ("models",), response=ModelList, errors=(401, 429),
                  returns="OpenAI's model list"),
        Operation("/v1/models/{model}", "get", "retrieveModel", "The served model, by id",
                  ("models",), response=ModelCard, errors=(401, 404, 429),
                  returns="OpenAI's model object",
                  parameters=(Param("model", "path", "the model id (may contain `/`)"),)),
    ),
    "event-requests": (
        Operation("/", "post", "requestEvent",
                  "An OpenAI request as a CloudEvent; the answer is the reply event", ("events",),
                  public=True, errors=(413, 429, 503),
                  event="dev.llmfn.chat.completion.requested.v1",
                  parameters=event_parameters("dev.llmfn.chat.completion.requested.v1",
                                              correlation=True),
                  description="A request event (`dev.llmfn.*.requested.v1`, docs/events.md) in "
                  "binary mode (`ce-*` headers, the OpenAI request body as the body) or "
                  "structured mode (`application/cloudevents+json`). Public: `API_KEYS` does not "
                  "apply. A request that can never succeed is answered **200** with a "
                  "`dev.llmfn.request.failed.v1` reply whose data is the OpenAI error body; 429 "
                  "and 503 (with `Retry-After`) and 5xx are retried by the Broker; a body that is "
                  "not a CloudEvent is a plain 400.",
                  responses={
                      200: {"description": "The reply event in binary mode: `ce-*` headers, its "
                            "data (the OpenAI response object, or for "
                            "`dev.llmfn.request.failed.v1` the OpenAI error body) as the body.",
                            "headers": {name: {"schema": {"type": "string"}}
                                        for name in ("ce-type", "ce-id", "ce-source")},
                            "content": {"application/json": {"schema": {"type": "object"}}}},
                      400: error_response("not a CloudEvent (nothing to reply to)")}),
    ),
}


ALL_GROUPS = tuple(GROUPS)


# -- the document ---------------------------------------------------------------------------------
def document(title: str, description: str, operations: Iterable[Operation],
             groups: Iterable[str] = ALL_GROUPS, *,
             version: str = VERSION) -> dict[str, Any]:
    """The OpenAPI 3.1 document of a function: the shared ``groups`` (:data:`GROUPS`) and its
    own ``operations``, each (path, method) described once."""
    ops = [op for group in groups for op in GROUPS[group]] + list(operations)
    kinds = list(dict.fromkeys([Error, StructuredCloudEvent]
                               + [kind for op in ops for kind in op.types()]))
    refs, schemas = protocol.schemas(kinds)
    ref = dict(zip(kinds, refs))
    for shared in (Error, StructuredCloudEvent):  # the shared responses name them
        if ref[shared] != _schema_ref(shared):
            raise ValueError(f"a type of the function is named {shared.__name__} too")
    if not any(op.event for op in ops):
        del schemas[StructuredCloudEvent.__name__]
    paths: dict[str, dict[str, Any]] = {}
    for op in ops:
        item = paths.setdefault(op.path, {})
        method = op.method.lower()
        if method in item:
            raise ValueError(f"{op.method.upper()} {op.path} described twice")
        item[method] = _operation(op, ref)
    used = {status for op in ops for status in _statuses(op)}
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version,
                 "description": f"{description} Errors have OpenAI's shape "
                                '`{"error": {"message", "type", "param", "code"}}`.'},
        "paths": paths,
        "components": {
            "securitySchemes": _SECURITY,
            "headers": {ref: spec for ref, spec in _HEADERS.values()},
            "schemas": dict(sorted(schemas.items())),
            "responses": {name: error_response(text, status)
                          for status, (name, text) in _ERROR_RESPONSES.items() if status in used},
        },
    }


def function_document(protocol: ModuleType) -> dict[str, Any]:
    """The document of a function from its ``function/protocol.py``: ``TITLE``,
    ``DESCRIPTION``, ``OPERATIONS`` (its own routes, its page included) and, when it has not
    all of them, ``GROUPS``. A protocol module imports only llmfn, so tools load it by path."""
    return document(protocol.TITLE, protocol.DESCRIPTION, protocol.OPERATIONS,
                    getattr(protocol, "GROUPS", ALL_GROUPS))


def _statuses(op: Operation) -> list[int]:
    """The error statuses answered from the shared responses."""
    statuses = set(op.errors)
    if op.event:
        statuses.add(413)
    elif op.request is not None:
        statuses |= {413, 415}
    if op.content != HTML:
        statuses.add(500)
    return sorted(s for s in statuses if s not in op.responses)


def _operation(op: Operation, ref: Mapping[type, dict[str, str]]) -> dict[str, Any]:
    out: dict[str, Any] = {"operationId": op.operation_id, "tags": list(op.tags),
                           "summary": op.summary}
    if op.description:
        out["description"] = op.description
    if not op.public:
        out["security"] = [{}, {"bearerAuth": []}]
    if op.parameters:
        out["parameters"] = [p.spec() for p in op.parameters]
    if op.event:  # the data: the request type's, else any object
        data = ({"description": "binary mode: the event's data", **ref[op.request]}
                if op.request is not None else
                {"type": "object", "description": "binary mode: the event's data"})
        out["requestBody"] = {"required": True, "content": {
            "application/json": {"schema": data},
            "application/cloudevents+json": {"schema": _schema_ref(StructuredCloudEvent)}}}
    elif op.request is not None:
        out["requestBody"] = {"required": True, "content": {
            "application/json": {"schema": ref[op.request]}}}
    responses: dict[str, Any] = {"200": _ok(op, ref)}
    for status in _statuses(op):
        responses[str(status)] = {"$ref": f"#/components/responses/{_ERROR_RESPONSES[status][0]}"}
    for status, response in op.responses.items():
        if response:  # an empty one removes a shared response (500 of a route that cannot fail)
            responses[str(status)] = dict(response)
    out["responses"] = dict(sorted(responses.items()))
    return out


def _ok(op: Operation, ref: Mapping[type, dict[str, str]]) -> dict[str, Any]:
    """The 200 response: the ``response`` type as JSON, the SSE stream, ``content``."""
    content: dict[str, Any] = {}
    if op.response is not None:
        content["application/json"] = {"schema": ref[op.response]}
    if op.stream is not None:
        content["text/event-stream"] = {
            "schema": {"type": "string",
                       "description": f"`data:` events of {_type_name(op.stream)} JSON"},
            "x-llmfn-chunk": ref[op.stream]}
    for media, schema in (op.content or {}).items():
        content[media] = {"schema": dict(schema)}
    text = op.returns or "OK"
    if op.stream is not None:
        text = f"{text}, or with `stream: true` {op.sse or SSE}"
    out: dict[str, Any] = {"description": text}
    if op.headers:
        out["headers"] = {name: _header_ref(name) for name in op.headers}
    if content:
        out["content"] = content
    return out


def _type_name(kind: Any) -> str:
    """A type's name; a union's as ``A | B`` (a stream of several event types)."""
    name = getattr(kind, "__name__", None)
    return name if name else " | ".join(_type_name(k) for k in typing.get_args(kind))


def attach(app: Flask, doc: dict[str, Any] | Callable[[], dict[str, Any]]) -> None:
    """Serve ``doc`` (built by :func:`document`) at ``/openapi.json``; a callable is called on
    the first request and its document kept. The functions pass one: building a document
    (the JSON Schemas of every type) takes 20-150 ms, which a cold start should not pay."""
    app.extensions[EXTENSION_KEY] = _Lazy(doc)


def served(app: Flask) -> dict[str, Any] | None:
    """The document :func:`attach` gave ``app`` (built now if it was not yet), or None."""
    lazy = app.extensions.get(EXTENSION_KEY)
    return None if lazy is None else lazy.get()


class _Lazy:
    def __init__(self, doc: dict[str, Any] | Callable[[], dict[str, Any]]):
        self._doc = doc
        self._lock = threading.Lock()

    def get(self) -> dict[str, Any]:
        with self._lock:
            if callable(self._doc):
                self._doc = self._doc()
            return self._doc
