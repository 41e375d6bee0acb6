"""Runtime: a model function's process (generate, embed) on the shared BaseRuntime.

It adds the model host (weights pulled and loaded in the background), ``/v1/models``, the
inference events and the model metrics, and the function's own API (its ``register``).
"""
from __future__ import annotations

import logging
from typing import Any, Callable

from flask import Flask

from .errors import NotReady
from .events import EventEmitter, InferenceRecord
from .host import Loader, ModelHost
from .metrics import Metrics
from .origin import Origin
from .runtime import BaseRuntime
from .settings import Settings
from .webapp import add_model_routes

log = logging.getLogger(__name__)

# register(app, runtime) adds the function's own API to the base app and returns an object
# with an optional ``drain(grace_s) -> bool`` and ``capacity`` (the function's worker).
Register = Callable[[Flask, "Runtime"], Any]


class Runtime(BaseRuntime):
    """A model function's process: model host, /v1/models, inference events, model metrics."""

    def __init__(self, function: str, settings: Settings, *, loader: Loader,
                 register: Register, fetch=None):
        super().__init__(function, settings.server, Metrics())
        self.settings = settings
        self.host = ModelHost(settings, loader, metrics=self.metrics,
                              **({"fetch": fetch} if fetch else {}))
        self.events = EventEmitter(settings.events, function=function,
                                   registry=self.metrics.registry)
        add_model_routes(self.app, self.host)
        self.service = register(self.app, self)

    @property
    def capacity(self) -> int:
        return getattr(self.service, "capacity", 1)

    def start(self) -> None:
        """Begin the weight pull and model load in the background."""
        self.host.start()

    def _ready(self) -> tuple[bool, str]:
        return self.host.ready()

    def model(self) -> Any:
        """The loaded model, or NotReady (503 + Retry-After) naming why it is not."""
        ok, reason = self.ready()
        if not ok:
            raise NotReady(f"The model is not ready yet ({reason}). Retry shortly.",
                           retry_after_s=self.server.retry_after_s)
        return self.host.model

    def alive(self) -> tuple[bool, str]:
        return self.host.alive()

    def emit_inference(self, origin: Origin, *, endpoint: str, status: int,
                       generation_s: float | None = None, **fields) -> bool:
        """Emit `dev.llmfn.inference.completed.v1` for one request (never blocks).

        ``origin`` gives the request id and, for a request event, the event's id, source and
        trace extensions. ``fields`` are InferenceRecord fields; tokens/s is derived from
        ``generation_s``.
        """
        fields.setdefault("prompt_tokens", 0)
        fields.setdefault("completion_tokens", 0)
        fields.setdefault("input_count", 1)
        fields.setdefault("duration_s", 0.0)
        fields.setdefault("cold_start", False)
        fields.setdefault("stream", False)
        done = fields["completion_tokens"]
        record = InferenceRecord(
            request_id=origin.rid, function=self.function, model=self.host.model_id,
            model_sha256=self.host.sha256, service=self.settings.events.service,
            revision=self.settings.events.revision, endpoint=endpoint, status=status,
            tokens_per_s=(done / generation_s) if generation_s and done else None, **fields)
        return self.events.emit_inference(record, id=origin.event_id, source=origin.event_source,
                                          extensions=dict(origin.extensions))

    def _stop(self, grace_s: float) -> None:
        """Let in-flight requests finish within the grace, then flush events."""
        drain = getattr(self.service, "drain", None)
        if drain is not None:
            drained = drain(grace_s)
            log.info("in-flight work %s", "finished" if drained else "cancelled after the grace")
        self.events.close(self.settings.events.flush_s)
