"""Runtime: the parts of one function process wired together (host, app, events, metrics).

Both serving paths build exactly one Runtime: func-python's (``function.new()``) and gunicorn's
(``function.wsgi``). Nothing here is global.
"""
from __future__ import annotations

import logging
from typing import Any, Callable

from flask import Flask

from .auth import BearerAuth, load_keys
from .events import EventEmitter, InferenceRecord
from .host import Loader, ModelHost
from .metrics import Metrics
from .settings import Settings
from .webapp import create_base_app

log = logging.getLogger(__name__)

# register(app, runtime) adds the function's own API to the base app and returns an object
# with an optional ``drain(grace_s) -> bool`` (the function's worker or batcher).
Register = Callable[[Flask, "Runtime"], Any]


class Runtime:
    """One function process: model host, Flask app, event emitter, metrics."""

    def __init__(self, function: str, settings: Settings, *, loader: Loader,
                 register: Register, fetch=None):
        self.function = function
        self.settings = settings
        self.metrics = Metrics()
        self.host = ModelHost(settings, loader, metrics=self.metrics,
                              **({"fetch": fetch} if fetch else {}))
        self.events = EventEmitter(settings.events, function=function,
                                   registry=self.metrics.registry)
        self.auth = BearerAuth(load_keys(settings.server))
        self.app = create_base_app(f"llmfn.{function}", settings, host=self.host,
                                   metrics=self.metrics, auth=self.auth)
        self.app.extensions["llmfn.runtime"] = self
        self.service = register(self.app, self)
        self._stopping = False

    def start(self) -> None:
        """Begin the weight pull and model load in the background."""
        self.host.start()

    def ready(self) -> tuple[bool, str]:
        if self._stopping:
            return False, "stopping"
        return self.host.ready()

    def alive(self) -> tuple[bool, str]:
        return self.host.alive()

    def emit_inference(self, request_id: str, *, endpoint: str, status: int,
                       generation_s: float | None = None, **fields) -> bool:
        """Emit `dev.llmfn.inference.completed.v1` for one request (never blocks).

        ``fields`` are InferenceRecord fields; tokens/s is derived from ``generation_s``.
        """
        fields.setdefault("prompt_tokens", 0)
        fields.setdefault("completion_tokens", 0)
        fields.setdefault("input_count", 1)
        fields.setdefault("duration_s", 0.0)
        fields.setdefault("cold_start", False)
        fields.setdefault("stream", False)
        done = fields["completion_tokens"]
        record = InferenceRecord(
            request_id=request_id, function=self.function, model=self.host.model_id,
            model_sha256=self.host.sha256, service=self.settings.events.service,
            revision=self.settings.events.revision, endpoint=endpoint, status=status,
            tokens_per_s=(done / generation_s) if generation_s and done else None, **fields)
        return self.events.emit_inference(record)

    def stop(self) -> None:
        """Stop taking work, let in-flight requests finish within the grace, flush events."""
        if self._stopping:
            return
        self._stopping = True
        grace = self.settings.server.grace_s
        drain = getattr(self.service, "drain", None)
        if drain is not None:
            drained = drain(grace)
            log.info("in-flight work %s", "finished" if drained else "cancelled after the grace")
        self.events.close(self.settings.events.flush_s)
