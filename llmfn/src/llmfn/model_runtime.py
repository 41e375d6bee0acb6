"""Runtime: a model function's process (generate, embed) on the shared BaseRuntime.

It adds the model host (weights pulled and loaded in the background), ``/v1/models``, the
inference events and the model metrics, and the function's own API (its ``register``).
"""
from __future__ import annotations

import errno
import logging
import time
from typing import Any, Callable

from flask import Flask

from .errors import NotReady
from .events import EventEmitter, InferenceRecord
from . import weights
from .host import Loader, ModelHost
from .metrics import Metrics
from .origin import Origin
from .runtime import BaseRuntime
from .settings import Settings, StorageSettings
from .webapp import add_model_routes

log = logging.getLogger(__name__)

REQUEST_TAIL_S = 5.0
"""After the model's work is drained (or cancelled), what the responses still get to finish
(their last chunks and events) even when the grace is over."""

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
                              fetch=fetch or fetch_naming_cache_dir)
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
        """The loaded model, or NotReady (503 + Retry-After) naming why it is not.

        Stopping is not a reason: a request admitted before the stop began is answered (new
        ones are refused 503 `shutting_down` at the door, see :meth:`_stop`)."""
        ok, reason = self.host.ready()
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
        fields.setdefault("key_id", origin.key_id)
        done = fields["completion_tokens"]
        record = InferenceRecord(
            request_id=origin.rid, function=self.function, model=self.host.model_id,
            model_sha256=self.host.sha256, service=self.settings.events.service,
            revision=self.settings.events.revision, endpoint=endpoint, status=status,
            tokens_per_s=(done / generation_s) if generation_s and done else None, **fields)
        return self.events.emit_inference(record, id=origin.event_id, source=origin.event_source,
                                          extensions=dict(origin.extensions))

    def _stop(self, grace_s: float) -> None:
        """Let the requests admitted before the stop finish within the grace, then flush events.

        New requests are refused from the start (:attr:`stopping`). The requests already
        admitted are waited for first, with the model loop still taking their work: one that
        was admitted just before the signal but reaches the loop after it is run, not refused.
        Then the loop drains in what is left of the grace and cancels what still runs; a
        cancelled response gets REQUEST_TAIL_S to send its last bytes and its event."""
        deadline = time.monotonic() + grace_s
        idle = self.wait_requests(grace_s)
        drain = getattr(self.service, "drain", None)
        if drain is not None:
            drained = drain(max(deadline - time.monotonic(), 0.0))
            log.info("in-flight work %s", "finished" if drained else "cancelled after the grace")
        if not idle:
            self.wait_requests(REQUEST_TAIL_S)
        self.events.close(self.settings.events.flush_s)


# errno of a write into the cache directory -> what is wrong with it
_CACHE_FAULTS = {errno.ENOSPC: "full", errno.EDQUOT: "full (disk quota)",
                 errno.EFBIG: "full (file size limit)", errno.EROFS: "read-only",
                 errno.EACCES: "not writable (permission denied)",
                 errno.EPERM: "not writable (operation not permitted)"}


def _os_error(err: BaseException | None) -> OSError | None:
    for _ in range(8):  # the exception itself or what it was raised from
        if err is None or isinstance(err, OSError):
            return err
        err = err.__cause__ or err.__context__
    return None


def fetch_naming_cache_dir(storage: StorageSettings, **kw) -> weights.FetchResult:
    """:func:`llmfn.weights.fetch`, whose errors of a full, read-only or unwritable cache
    directory (an S3 download goes there) become a WeightsError naming ``MODEL_CACHE_DIR``,
    its path and what is wrong, instead of a bare ``[Errno 28] No space left on device``."""
    try:
        return weights.fetch(storage, **kw)
    except Exception as err:
        cause = _os_error(err)
        why = _CACHE_FAULTS.get(getattr(cause, "errno", None))
        if why is None or not storage.model_uri.startswith("s3://"):
            raise
        raise weights.WeightsError(
            f"MODEL_CACHE_DIR {storage.cache_dir!r} is {why}: {cause.strerror}; the weights of "
            f"{storage.model_uri} cannot be stored there (give it room, e.g. the emptyDir's "
            "sizeLimit, or mount it writable)") from err
