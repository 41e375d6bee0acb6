"""The Knative Function (func-python `invoke: cloudevent` contract): `new()` returns it.

func-python's cloudevent middleware answers /health/* itself (calling `alive()`/`ready()`),
decodes every other request into ``scope["event"]`` and calls :meth:`AuditFunction.handle`.
A request it cannot decode as a CloudEvent (for example a plain `GET /kpis` without `ce-*`
headers: its empty body is not a structured event) is answered 400 by the middleware before
`handle` runs; KPI queries through this path must carry `ce-*` headers (docs/audit.md) and are
routed here by method and path, ignoring the event.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Mapping
from urllib.parse import parse_qsl

from .ingest import binary_id_problems
from .service import AuditService, Response
from .settings import AuditSettings

log = logging.getLogger(__name__)


def new() -> "AuditFunction":
    """Called once by the func runtime (scaffolding `serve(new)`) to build the instance."""
    return AuditFunction()


class AuditFunction:
    """Adapts :class:`AuditService` to the ASGI scope/receive/send of func-python."""

    def __init__(self):
        self.service: AuditService | None = None

    def start(self, cfg: Mapping[str, str]) -> None:
        """Called at ASGI lifespan startup with the environment as ``cfg``; returns at once."""
        self.service = AuditService(AuditSettings.from_mapping(cfg))
        self.service.start()

    def stop(self) -> None:
        """Called at ASGI lifespan shutdown (SIGTERM)."""
        if self.service is not None:
            self.service.stop()

    def alive(self):
        """Called by the liveness probe (`/health/liveness`)."""
        return True, "OK"

    def ready(self):
        """Called by the readiness probe (`/health/readiness`)."""
        if self.service is None:
            return False, "not started"
        return self.service.ready()

    async def handle(self, scope, receive, send) -> None:
        """Called per request with the decoded CloudEvent in ``scope["event"]``."""
        resp = await asyncio.to_thread(self._route, scope)
        headers = [(b"content-type", resp.content_type.encode()),
                   (b"content-length", str(len(resp.body)).encode())]
        headers += [(k.lower().encode(), v.encode()) for k, v in resp.headers.items()]
        raw = getattr(send, "http", send)  # CloudEventSender.http sends raw ASGI messages
        await raw({"type": "http.response.start", "status": resp.status, "headers": headers})
        await raw({"type": "http.response.body", "body": resp.body})

    def _route(self, scope) -> Response:
        if self.service is None:
            return Response.json(503, {"error": {"message": "not started", "type":
                                                 "service_unavailable", "param": None,
                                                 "code": "not_ready"}})
        method, path = scope.get("method", "GET"), scope.get("path", "/")
        if method in ("GET", "HEAD"):
            query = scope.get("query_string", b"").decode("latin-1")
            return self.service.get(path, dict(parse_qsl(query)))
        if method != "POST":
            return Response.json(405, {"error": {"message": "Method not allowed on this route.",
                                                 "type": "invalid_request_error", "param": None,
                                                 "code": "method_not_allowed"}})
        problems = binary_id_problems(_headers(scope))
        if problems:
            return self.service.invalid(problems)
        return self.service.post(path, scope["event"], _content_length(scope))


def _headers(scope) -> dict[str, str]:
    return {k.decode("latin-1").lower(): v.decode("latin-1")
            for k, v in scope.get("headers", [])}


def _content_length(scope) -> int | None:
    try:
        return int(_headers(scope)["content-length"])
    except (KeyError, ValueError):
        return None
