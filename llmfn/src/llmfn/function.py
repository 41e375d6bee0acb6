"""The Knative Functions (func-python) contract: the object ``function.new()`` returns.

All three functions use it with ``invoke: http``: func-python serves ``/health/*`` itself
(calling ``alive()``/``ready()``) and hands every other request, GETs included, to ``handle``,
which runs the runtime's Flask app on a WSGI->ASGI bridge. CloudEvents are decoded by the app
(``llmfn.ce_http``), not by func-python's cloudevent middleware.
"""
from __future__ import annotations

import logging
from typing import Callable, Mapping

from .asgi import WSGIBridge
from .runtime import BaseRuntime

log = logging.getLogger(__name__)


class LLMFunction:
    """A func-python function instance backed by a runtime and a WSGI->ASGI bridge."""

    def __init__(self, create_runtime: Callable[[Mapping[str, str]], BaseRuntime]):
        self._create_runtime = create_runtime
        self.runtime: BaseRuntime | None = None
        self._bridge: WSGIBridge | None = None

    def start(self, cfg: Mapping[str, str]) -> None:
        """Called once at ASGI lifespan startup, before the server listens, with the
        environment as ``cfg``: read config, start background work, return at once."""
        self.runtime = rt = self._create_runtime(cfg)
        count = rt.metrics.requests
        self._bridge = WSGIBridge(
            rt.app, max_workers=rt.bridge_threads, max_body_bytes=rt.server.max_request_bytes,
            retry_after_s=rt.server.retry_after_s,
            on_reject=lambda status: count.labels(route="bridge", status=str(status)).inc())
        rt.start()

    async def handle(self, scope, receive, send) -> None:
        """Called for every HTTP request (except the health paths func-python serves)."""
        if self._bridge is None:
            raise RuntimeError("handle() called before start()")
        await self._bridge(scope, receive, send)

    def ready(self) -> tuple[bool, str]:
        """Called by the readiness probe: False with a reason until the function can serve."""
        if self.runtime is None:
            return False, "not started"
        return self.runtime.ready()

    def alive(self) -> tuple[bool, str]:
        """Called by the liveness probe: False only when the process cannot recover (the pod
        restarts), e.g. the model failed to load for good."""
        if self.runtime is None:
            return True, "starting"
        return self.runtime.alive()

    def stop(self) -> None:
        """Called at ASGI lifespan shutdown (SIGTERM): finish in-flight work within the grace
        period, flush events, then refuse what is left."""
        if self.runtime is not None:
            self.runtime.stop()
        if self._bridge is not None:
            self._bridge.shutdown(wait=False)
