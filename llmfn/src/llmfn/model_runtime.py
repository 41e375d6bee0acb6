"""Runtime: the process of a function with a model (its contract's ``model``) on BaseRuntime.

It adds the model host (weights pulled and loaded in the background), ``/v1/models``, the
inference events and the model metrics; the function's own API is plugged in by
``llmfn.runtime.build_runtime`` from its contract, as for every function.
"""
from __future__ import annotations

import errno
import logging
from typing import Any

from . import weights
from .errors import NotReady
from .events import EventEmitter, InferenceRecord
from .host import Loader, ModelHost
from .metrics import Metrics
from .origin import Origin
from .runtime import BaseRuntime
from .settings import Settings, StorageSettings
from .webapp import add_model_routes

log = logging.getLogger(__name__)

class Runtime(BaseRuntime):
    """A model function's process: model host, /v1/models, inference events, model metrics."""

    metrics: Metrics

    def __init__(self, function: str, settings: Settings, *, loader: Loader,
                 metrics: Metrics | None = None, fetch=None):
        super().__init__(function, settings.server, metrics or Metrics())
        self.settings = settings
        self.host = ModelHost(settings, loader, metrics=self.metrics,
                              fetch=fetch or fetch_naming_cache_dir)
        self.events = EventEmitter(settings.events, function=function,
                                   registry=self.metrics.registry)
        add_model_routes(self.app, self.host)

    def start(self) -> None:
        """Begin the weight pull and model load in the background, then the worker."""
        self.host.start()
        super().start()

    def _ready(self) -> tuple[bool, str]:
        ok, reason = self.host.ready()
        return self.service.ready() if ok else (ok, reason)

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
        ok, reason = self.host.alive()
        return self.service.alive() if ok else (ok, reason)

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

    def _stopped(self) -> None:
        """After the drain: flush the inference events."""
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
        why = _CACHE_FAULTS.get(cause.errno) if cause is not None and cause.errno else None
        if cause is None or why is None or not storage.model_uri.startswith("s3://"):
            raise
        raise weights.WeightsError(
            f"MODEL_CACHE_DIR {storage.cache_dir!r} is {why}: {cause.strerror}; the weights of "
            f"{storage.model_uri} cannot be stored there (give it room, e.g. the emptyDir's "
            "sizeLimit, or mount it writable)") from err
