"""Who asked for an inference: a plain HTTP request, or a request CloudEvent.

An HTTP request gets a fresh id and the current time. A request event (``llmfn.event_requests``)
gets ids derived from its ``source`` and ``id``, so a redelivery is recognisable as the same
request on any pod and any revision: the response's ``id`` and ``created``, and the id and
source of the inference event audit counts.
"""
from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field

ORIGIN_KEY = "llmfn.origin"
"""WSGI environ key of the request's :class:`Origin` (set by the event route, else made here)."""


@dataclass(frozen=True)
class Origin:
    rid: str
    """Request id: the response's ``id`` suffix, ``X-Request-Id``, the inference record's."""
    created: int
    """The response's ``created`` (Unix seconds)."""
    event_id: str | None = None
    """id of the inference event; None: ``rid``."""
    event_source: str | None = None
    """source of the inference event; None: the emitter's own (with the revision)."""
    extensions: Mapping[str, str] = field(default_factory=dict)
    """Extensions carried into the inference event (``traceparent``, ``tracestate``)."""
    key_id: str | None = None
    """:func:`llmfn.auth.key_id` of the caller's bearer key; None without auth (or an event)."""

    @classmethod
    def fresh(cls, key_id: str | None = None) -> Origin:
        return cls(uuid.uuid4().hex, int(time.time()), key_id=key_id)


KEY_ID_KEY = "llmfn.key_id"
"""WSGI environ key of the caller's key id (set by the base app's auth check)."""


def current_origin() -> Origin:
    """The Origin of the Flask request being served (one per request)."""
    from flask import request
    origin = request.environ.get(ORIGIN_KEY)
    if origin is None:
        origin = request.environ[ORIGIN_KEY] = Origin.fresh(request.environ.get(KEY_ID_KEY))
    return origin
