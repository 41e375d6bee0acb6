"""An API route's handler: one function that both its HTTP view and request events call.

A handler takes an :class:`Inbound` (the route, the request's JSON body, its
:class:`~llmfn.origin.Origin` and the client's disconnect signal) and returns a :class:`Result`
(status, payload, headers), or raises an ``llmfn.errors.APIError``. Its HTTP view (added by
:func:`add`) reads the body from the request and writes the result as the response; a request
event (``llmfn.event_requests``) calls the same handler directly with the event's data, and
its reply carries the payload.

The body is read when the handler asks for it (:meth:`Inbound.body`), so what it checks first
(is the model ready?) and the inference event of a body that does not parse stay the same on
both paths.
"""
from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from flask import Flask, Response, jsonify, request

from . import protocol
from .origin import Origin, current_origin
from .webapp import json_body

DISCONNECTED_KEY = "llmfn.disconnected"
"""WSGI environ key of the client's disconnect signal (a ``threading.Event``), set by
func-python's bridge (``llmfn.asgi.DISCONNECTED_KEY``)."""
HANDLERS = "llmfn.handlers"
"""``app.extensions`` key: the handler of each API route, by rule."""


@dataclass
class Inbound:
    """One call of a handler: an HTTP request or a request event."""
    route: str
    """The API route's rule (``/v1/chat/completions``): the inference event's endpoint."""
    origin: Origin
    read: Callable[[], dict[str, Any]]
    """Returns the JSON body (parsing an HTTP body may raise its 400/413/415)."""
    disconnected: threading.Event | None = None
    """Set when the client went away (the HTTP connection, or the request event's delivery)."""

    def body(self) -> dict[str, Any]:
        return self.read()


@dataclass
class Result:
    """What a handler answers: a JSON object (a dict or a ``llmfn.protocol.Model``), or a
    stream of bytes (SSE) for ``mimetype``."""
    payload: Any
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    mimetype: str = "application/json"

    @property
    def streamed(self) -> bool:
        return self.mimetype != "application/json"

    def json(self) -> Any:
        """The JSON payload as dicts and lists (a request event's reply data)."""
        return protocol.to_builtins(self.payload)


Handler = Callable[[Inbound], Result]


def add(app: Flask, rule: str, endpoint: str, handler: Handler) -> None:
    """``POST rule``: ``handler`` behind the base app's checks (auth, limits, stopping)."""

    def view() -> Response:
        inbound = Inbound(rule, current_origin(), json_body,
                          request.environ.get(DISCONNECTED_KEY))
        return response(handler(inbound))

    view.__name__ = endpoint
    app.add_url_rule(rule, endpoint, view, methods=["POST"])
    app.extensions.setdefault(HANDLERS, {})[rule] = handler


def handler(app: Flask, rule: str) -> Handler:
    """The handler of the API route ``rule`` (KeyError if ``app`` has none)."""
    return app.extensions.get(HANDLERS, {})[rule]


def response(result: Result) -> Response:
    """``result`` as the HTTP response."""
    if result.streamed:
        resp = Response(result.payload, status=result.status, mimetype=result.mimetype)
    elif isinstance(result.payload, dict):
        resp = jsonify(result.payload)
        resp.status_code = result.status
    else:
        resp = Response(protocol.encode(result.payload), status=result.status,
                        mimetype="application/json")
    for key, value in result.headers.items():
        resp.headers[key] = value
    return resp


def stream(chunks: Iterator[bytes], **headers: str) -> Result:
    """A Server-Sent Events stream of ``chunks`` (unbuffered by proxies)."""
    return Result(chunks, headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no",
                                   **headers}, mimetype="text/event-stream")
