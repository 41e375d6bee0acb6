"""Inference asked for with a CloudEvent, answered with a reply event (Knative's data plane).

A request event (``dev.llmfn.*.requested.v1``) POSTed to ``/`` in binary or structured mode
carries an OpenAI request body as ``data``. It is served by a direct call of the handler of the
API route its type names in the function's contract (``llmfn.contract.RequestEvent``; the same
handler the HTTP route calls, ``llmfn.routes``: same validation and limits; no streaming), and
the HTTP response to the delivery *is* the reply: 200 with a binary-mode CloudEvent whose data
is the OpenAI response object. ``POST /`` is public (the Broker sends no key) and refused 503
while the runtime stops, like every route but the probes.

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
from collections.abc import Mapping
from typing import Any

from flask import Flask, Response, request

from . import routes
from .ce_http import decode_http
from .contract import RequestEvent
from .errors import APIError, InvalidRequest, NotFound, internal_error
from .origin import Origin
from .settings import EventSettings
from .webapp import checked_body, public

log = logging.getLogger(__name__)

FAILED = "dev.llmfn.request.failed.v1"
TRACE_EXTENSIONS = ("traceparent", "tracestate")
NOT_COPIED = {"knativearrivaltime", "knativeerrorcode", "knativeerrordest", "knativeerrordata"}
_CORE = {"id", "source", "type", "specversion", "time", "subject", "datacontenttype",
         "dataschema"}


class UnknownEventType(NotFound):
    """A request event of a type this function does not serve (a failed reply)."""
    status = 400
    code = "unknown_event_type"


def register(app: Flask, function: str, settings: EventSettings,
             types: Mapping[str, RequestEvent]) -> EventRequests:
    """Serve the request event ``types`` (a contract's ``events``) on ``POST /`` (public: the
    Broker sends no key); their routes' handlers must be on ``app`` already."""
    for kind in types.values():
        routes.handler(app, kind.route)  # a KeyError now, not at the first event
    handler = EventRequests(app, function, settings, dict(types))
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
    return int(dt.datetime.now(dt.UTC).timestamp())


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

    def __init__(self, app: Flask, function: str, settings: EventSettings,
                 types: dict[str, RequestEvent]):
        self.app = app
        self.settings = settings
        self.types = types
        self.function_source = f"/llmfn/{function}" + (
            f"/{settings.service}" if settings.service else "")

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
            status, body, headers = self._call(kind.route, data, origin)
        except APIError as err:
            status, body, headers = err.status, err.body(), err.headers()
        if status == 200:
            assert kind is not None  # an unknown type raised UnknownEventType above
            return self._reply(event, digest, kind.reply, body)
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

    def _call(self, route: str, data: dict, origin: Origin
              ) -> tuple[int, dict[str, Any], dict[str, str]]:
        """Call the API route's handler in this thread, as its HTTP view does (auth aside: the
        event was let in by ``POST /``); an unexpected error is a 500, as over HTTP."""
        inbound = routes.Inbound(route, origin, lambda: checked_body(data),  # as an HTTP body
                                 request.environ.get(routes.DISCONNECTED_KEY))
        try:
            result = routes.handler(self.app, route)(inbound)
        except APIError:
            raise
        except Exception:
            log.exception("request event: the handler of %s failed", route)
            raise internal_error() from None
        payload = None if result.streamed else result.json()
        if not isinstance(payload, dict):
            log.error("request event: %s answered %s, not a JSON object", route, result.mimetype)
            raise internal_error()
        headers = {k: v for k, v in result.headers.items() if k == "Retry-After"}
        return result.status, payload, headers

    def _reply(self, event, digest: str, reply_type: str, body: dict) -> Response:
        cfg = self.settings
        attrs: dict[str, Any] = {
            k: v for k, v in event.get_attributes().items()
            if k not in _CORE and k not in NOT_COPIED and v is not None}
        attrs.update({"specversion": "1.0", "id": f"{digest[:32]}.r",
                      "source": self.function_source, "type": reply_type,
                      "datacontenttype": "application/json",
                      "time": dt.datetime.now(dt.UTC),
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
