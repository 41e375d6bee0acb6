"""The Knative Functions (func-python) contract: the object ``function.new()`` returns.

func-python calls ``start(cfg)`` before it listens, ``handle`` for every request but
``/health/*``, ``ready()``/``alive()`` for the probes and ``stop()`` on shutdown.
"""
from __future__ import annotations

import logging
from typing import Callable, Mapping

from .asgi import WSGIBridge
from .runtime import Runtime

log = logging.getLogger(__name__)


class LLMFunction:
    """A func-python function instance backed by a Runtime and a WSGI->ASGI bridge."""

    def __init__(self, create_runtime: Callable[[Mapping[str, str]], Runtime]):
        self._create_runtime = create_runtime
        self.runtime: Runtime | None = None
        self._bridge: WSGIBridge | None = None

    def start(self, cfg: Mapping[str, str]) -> None:
        """Called once before the server listens: read config, start loading, return at once."""
        self.runtime = self._create_runtime(cfg)
        # one thread per running and waiting request, plus probes and metrics
        running = getattr(self.runtime.service, "capacity", 1)
        self._bridge = WSGIBridge(self.runtime.app,
                                  max_workers=self.runtime.settings.server.queue_size + running
                                  + 16,
                                  max_body_bytes=self.runtime.settings.server.max_request_bytes,
                                  retry_after_s=self.runtime.settings.server.retry_after_s)
        self.runtime.start()

    async def handle(self, scope, receive, send) -> None:
        """Called for every HTTP request (except the health paths func-python serves)."""
        if self._bridge is None:
            raise RuntimeError("handle() called before start()")
        await self._bridge(scope, receive, send)

    def ready(self) -> tuple[bool, str]:
        """Readiness probe: False with a reason until the model is loaded."""
        if self.runtime is None:
            return False, "not started"
        return self.runtime.ready()

    def alive(self) -> tuple[bool, str]:
        """Liveness probe: False only when loading failed for good (the pod restarts)."""
        if self.runtime is None:
            return True, "starting"
        return self.runtime.alive()

    def stop(self) -> None:
        """Called on shutdown: finish in-flight streams within the grace period, flush events."""
        if self.runtime is not None:
            self.runtime.stop()
        if self._bridge is not None:
            self._bridge.shutdown(wait=False)
