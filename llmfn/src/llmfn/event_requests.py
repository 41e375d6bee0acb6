"""Inference asked for with a CloudEvent, answered with a reply event (Knative's data plane).

A request event (``dev.llmfn.*.requested.v1``) POSTed to ``/`` in binary or structured mode
carries an OpenAI request body as ``data``. It is served by the same view as the HTTP request
(same validation and limits; no streaming), and the HTTP response to the delivery *is* the
reply: 200 with a binary-mode CloudEvent whose data is the OpenAI response object.

- A request that can never succeed (undecodable data, an unknown type, a 4xx from the API such
  as over the context) gets a ``dev.llmfn.request.failed.v1`` reply with the OpenAI error body
  ``{"error": {...}}``, also 200: Knative takes any non-2xx for a failed delivery whose body is
  not a reply, so only a 2xx tells the producer, and it is not retried.
- One that may succeed later (429 queue full, 503 not ready or shutting down, any 5xx) is
  answered with that status and ``Retry-After``, so the Broker retries it.
- A body that is not a CloudEvent at all is a plain 400 (there is nothing to reply to).

Redelivery is at least once, so everything that identifies the answer derives from the
request's (source, id): the reply's id and source, the response's ``id``, ``created`` (from the
event's ``time``, else the Broker's ``knativearrivaltime``), a ``seed`` when the request gives
none, and the id and source of the inference event audit counts (no revision or pod in them).

Correlation (CloudEvents correlation extension): ``causationid`` = the request's id,
``correlationid`` = the request's ``correlationid``, else its id. Knative's RequestReply puts an
opaque ``<id>:<encrypted id>:<replica>`` in the request's ``REPLY_CORRELATION_ATTRIBUTE`` and
expects it, unchanged, in the reply's ``REPLY_ID_ATTRIBUTE``: it is copied as is. ``subject``
and every other extension are copied (``traceparent``/``tracestate`` also go into the inference
event), except the Broker's own ``knativearrivaltime`` and ``knativeerror*``.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
from dataclasses import dataclass
from typing import Any, Iterable

from flask import Flask, Response, request

from .ce_http import decode_http
from .errors import APIError, InvalidRequest, NotFound
from .origin import ORIGIN_KEY, Origin
from .webapp import INTERNAL_KEY, public

log = logging.getLogger(__name__)

FAILED = "dev.llmfn.request.failed.v1"
TRACE_EXTENSIONS = ("traceparent", "tracestate")
NOT_COPIED = {"knativearrivaltime", "knativeerrorcode", "knativeerrordest", "knativeerrordata"}
_CORE = {"id", "source", "type", "specversion", "time", "subject", "datacontenttype",
         "dataschema"}


@dataclass(frozen=True)
class RequestType:
    """A request event type: the function and API route that serve it, its reply's type."""
    function: str
    endpoint: str
    reply_type: str
    seeded: bool = False  # sampling: a seed is derived from the event when none is given


REQUEST_TYPES = {
    "dev.llmfn.chat.completion.requested.v1": RequestType(
        "generate", "/v1/chat/completions", "dev.llmfn.chat.completion.v1", seeded=True),
    "dev.llmfn.completion.requested.v1": RequestType(
        "generate", "/v1/completions", "dev.llmfn.completion.v1", seeded=True),
    "dev.llmfn.embeddings.requested.v1": RequestType(
        "embed", "/v1/embeddings", "dev.llmfn.embeddings.v1"),
}


def served_by(function: str) -> list[str]:
    """The request event types ``function`` (generate, embed) serves."""
    return [t for t, kind in REQUEST_TYPES.items() if kind.function == function]


class UnknownEventType(NotFound):
    """A request event of a type this function does not serve (a failed reply)."""
    status = 400
    code = "unknown_event_type"


def register(app: Flask, runtime, types: Iterable[str]) -> "EventRequests":
    """Serve the request event ``types`` on ``POST /`` (public: the Broker sends no key)."""
    handler = EventRequests(app, runtime, {t: REQUEST_TYPES[t] for t in types})
    public(app, "/", "event_request", handler.serve, methods=("POST",))
    return handler


def _digest(source: str, event_id: str) -> str:
    return hashlib.sha256(f"{source}\x1f{event_id}".encode()).hexdigest()


def _created(event) -> int:
    """The request's ``time`` as given by the producer, else the Broker's arrival time; else
    now (not stable across redeliveries: producers should set ``time``)."""
    given = request.headers.get("ce-time") or _structured_attr("time")
    for raw in (given, event.get_extension("knativearrivaltime")):
        if isinstance(raw, str):
            try:
                return int(dt.datetime.fromisoformat(raw.replace("Z", "+00:00")).timestamp())
            except ValueError:
                continue
    return int(dt.datetime.now(dt.timezone.utc).timestamp())


def _structured_attr(name: str) -> Any:
    if not (request.mimetype or "").startswith("application/cloudevents"):
        return None
    try:
        doc = json.loads(request.get_data(cache=True))
    except (ValueError, RecursionError):
        return None
    return doc.get(name) if isinstance(doc, dict) else None


class EventRequests:
    """The ``POST /`` view: decode, serve through the API route, answer with the reply."""

    def __init__(self, app: Flask, runtime, types: dict[str, RequestType]):
        self.app = app
        self.rt = runtime
        self.types = types
        self.function_source = f"/llmfn/{runtime.function}" + (
            f"/{runtime.settings.events.service}" if runtime.settings.events.service else "")

    def serve(self):
        event = decode_http(dict(request.headers), request.get_data(cache=True))
        digest = _digest(event.get_source(), event.get_id())
        origin = Origin(rid=digest[:32], created=_created(event), event_id=f"{digest[:32]}.i",
                        event_source=self.function_source,
                        extensions={k: str(event.get_extension(k)) for k in TRACE_EXTENSIONS
                                    if event.get_extension(k) is not None})
        kind = self.types.get(event.get_type())
        try:
            if kind is None:
                raise UnknownEventType(f"This function serves the event types "
                                       f"{sorted(self.types)}, not {event.get_type()!r}.")
            data = self._data(event)
            if kind.seeded and data.get("seed") is None:
                data["seed"] = int(digest[:8], 16) & 0x7FFFFFFF
            status, body, headers = self._dispatch(kind.endpoint, data, origin)
        except APIError as err:
            status, body, headers = err.status, err.body(), err.headers()
        if status == 200:
            return self._reply(event, digest, kind.reply_type, body)
        if status == 429 or status >= 500:  # may succeed later: the Broker retries
            return Response(json.dumps(body), status=status, headers=headers,
                            mimetype="application/json")
        log.info("request event id=%r source=%r failed: %s", event.get_id(), event.get_source(),
                 body.get("error", {}).get("message"))
        return self._reply(event, digest, FAILED, body)

    @staticmethod
    def _data(event) -> dict:
        media = (event.get_datacontenttype() or "application/json").split(";")[0].strip()
        data = event.get_data()
        if media != "application/json" or not isinstance(data, dict):
            raise InvalidRequest("A request event's data must be an OpenAI request body: a JSON "
                                 "object with datacontenttype application/json.", param="data")
        if data.get("stream") not in (None, False):
            raise InvalidRequest("Streaming is not available for request events: the reply "
                                 "carries the whole answer.", param="stream")
        return dict(data)

    def _dispatch(self, endpoint: str, data: dict, origin: Origin):
        """Run the API route in this thread, exactly as an HTTP request (auth aside)."""
        environ = {ORIGIN_KEY: origin, INTERNAL_KEY: True}
        disconnected = request.environ.get("llmfn.disconnected")
        if disconnected is not None:
            environ["llmfn.disconnected"] = disconnected
        resp = self.app.test_client().post(endpoint, data=json.dumps(data),
                                           content_type="application/json",
                                           environ_overrides=environ)
        headers = {k: v for k, v in resp.headers.items() if k == "Retry-After"}
        return resp.status_code, resp.get_json(silent=True) or {}, headers

    def _reply(self, event, digest: str, reply_type: str, body: dict) -> Response:
        cfg = self.rt.settings.events
        attrs: dict[str, Any] = {
            k: v for k, v in event.get_attributes().items()
            if k not in _CORE and k not in NOT_COPIED and v is not None}
        attrs.update({"specversion": "1.0", "id": f"{digest[:32]}.r",
                      "source": self.function_source, "type": reply_type,
                      "datacontenttype": "application/json",
                      "time": dt.datetime.now(dt.timezone.utc),
                      "causationid": event.get_id(),
                      "correlationid": event.get_extension("correlationid") or event.get_id()})
        if event.get_subject():
            attrs["subject"] = event.get_subject()
        correlation = event.get_extension(cfg.correlation_attribute)
        if correlation is not None:
            attrs[cfg.reply_attribute] = correlation
        from cloudevents.core.bindings.http import to_binary_event  # not at start
        from cloudevents.core.v1.event import CloudEvent

        message = to_binary_event(CloudEvent(attrs, body))
        return Response(message.body, status=200, headers=dict(message.headers))
