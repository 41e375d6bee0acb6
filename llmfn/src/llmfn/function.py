"""The Knative Functions (func-python) contract: the object ``function.new()`` returns.

All three functions use it with ``invoke: http``: func-python serves ``/health/*`` itself
(calling ``alive()``/``ready()``) and hands every other request, GETs included, to ``handle``,
which runs the runtime's Flask app on a WSGI->ASGI bridge. CloudEvents are decoded by the app
(``llmfn.ce_http``), not by func-python's cloudevent middleware.
"""
from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Mapping
from typing import TYPE_CHECKING

from .contract import FunctionSpec
from .runtime import BaseRuntime, build_runtime

if TYPE_CHECKING:  # asyncio's bridge: imported in start(), only this (func-python's) path
    from .asgi import WSGIBridge

log = logging.getLogger(__name__)


class LLMFunction:
    """A func-python function instance backed by a runtime and a WSGI->ASGI bridge: what a
    function's ``new()`` returns, ``LLMFunction(SPEC)`` (its contract, ``llmfn.contract``)."""

    def __init__(self, spec: FunctionSpec):
        self.spec = spec
        self.function = spec.name
        self.runtime: BaseRuntime | None = None
        self._bridge: WSGIBridge | None = None  # once started
        self._draining = False

    def start(self, cfg: Mapping[str, str]) -> None:
        """Called once at ASGI lifespan startup, before the server listens, with the
        environment as ``cfg``: read config, start background work, return at once."""
        from .asgi import WSGIBridge  # asyncio: only this (func-python's) path needs it

        self.runtime = rt = build_runtime(self.spec, cfg)
        count = rt.metrics.requests
        self._bridge = WSGIBridge(
            rt.app, max_workers=rt.bridge_threads, max_body_bytes=rt.server.max_request_bytes,
            retry_after_s=rt.server.retry_after_s,
            on_reject=lambda status: count.labels(route="bridge", status=str(status)).inc())
        rt.start()
        self._drain_on_sigterm()

    def _drain_on_sigterm(self) -> None:
        """Serve on while draining at SIGTERM. func-python's server (Hypercorn) would stop
        listening at once and cancel what still runs after its 3 s graceful timeout, and only
        then run ``stop()``. Instead: drain first (readiness 503 "stopping", new requests 503 +
        Retry-After, in-flight ones finish within SHUTDOWN_GRACE_S, events flushed), then hand
        over to Hypercorn's own shutdown (its SIGINT handler) with nothing left in flight."""
        try:
            loop = asyncio.get_running_loop()
            loop.add_signal_handler(signal.SIGTERM, self._on_sigterm, loop)
        except (RuntimeError, ValueError, NotImplementedError):
            pass  # no loop, or not the main thread (an embedded server): plain stop() only

    def _on_sigterm(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._draining:
            return
        self._draining = True

        async def drain():
            try:
                assert self.runtime is not None  # start() built it before installing this
                await asyncio.to_thread(self.runtime.stop)
            finally:
                os.kill(os.getpid(), signal.SIGINT)

        self._drain_task = loop.create_task(drain())  # referenced: not collected mid-way

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
