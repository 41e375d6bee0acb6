"""BaseRuntime: the parts of one function process wired together behind one Flask app.

What every function has: server settings, request metrics, the base app (health, /metrics,
auth, errors) and the lifecycle the platform drives (start, ready, alive, stop).
``llmfn.model_runtime.Runtime`` adds a model (host, /v1/models, inference events) for generate
and embed; audit subclasses BaseRuntime with its event store (and imports no model code).

Both serving paths build exactly one runtime per process: func-python's (``function.new()``)
and gunicorn's (``function.wsgi``). Nothing here is global.
"""
from __future__ import annotations

import logging
import time
from typing import Callable, Mapping

from .auth import BearerAuth, KeyLimiter
from .errors import InvalidSettings
from .metrics import HTTPMetrics
from .settings import ServerSettings, SettingsError, check_templates
from .webapp import INFLIGHT, create_base_app

log = logging.getLogger(__name__)

BRIDGE_SPARE_THREADS = 16
"""Threads of func-python's bridge beyond running and queued requests: probes, metrics, 429s."""


class BaseRuntime:
    """One function process: its settings, metrics and app, and the lifecycle hooks."""

    def __init__(self, function: str, server: ServerSettings, metrics: HTTPMetrics):
        self.function = function
        self.server = server
        self.metrics = metrics
        self.auth = BearerAuth.from_settings(server)
        self.key_limiter = KeyLimiter(server.max_concurrent_per_key, server.retry_after_s)
        self.app = create_base_app(f"llmfn.{function}", max_request_bytes=server.max_request_bytes,
                                   probes=self, metrics=metrics, auth=self.auth,
                                   key_limiter=self.key_limiter,
                                   retry_after_s=server.retry_after_s)
        self.app.extensions["llmfn.runtime"] = self  # gunicorn_conf's worker_exit calls stop()
        self._stopping = False

    @property
    def capacity(self) -> int:
        """Requests that run at once (the rest wait in the queue of ``QUEUE_SIZE``)."""
        return 1

    @property
    def bridge_threads(self) -> int:
        """Threads func-python's WSGI bridge needs: running + queued requests + spare."""
        return self.capacity + self.server.queue_size + BRIDGE_SPARE_THREADS

    def start(self) -> None:
        """Begin background work (pull weights, connect to a database); returns at once."""

    @property
    def stopping(self) -> bool:
        """True from the start of :meth:`stop` on: new requests get 503 + Retry-After."""
        return self._stopping

    def ready(self) -> tuple[bool, str]:
        if self._stopping:
            return False, "stopping"
        return self._ready()

    def _ready(self) -> tuple[bool, str]:
        return True, "ready"

    def alive(self) -> tuple[bool, str]:
        return True, "alive"

    def stop(self) -> None:
        """Stop taking work and let in-flight work finish within ``SHUTDOWN_GRACE_S`` (once).

        Returns no sooner than ``SHUTDOWN_MIN_S`` after it began: the server closes its port
        when this returns, and a router that polls readiness (the kubelet, a load balancer)
        must see "stopping" before that, or what it still sends finds a closed port or a
        connection reset. Until then new requests get 503 + Retry-After."""
        if self._stopping:
            return
        self._stopping = True
        t0 = time.monotonic()
        self._stop(self.server.grace_s)
        rest = self.server.min_stop_s - (time.monotonic() - t0)
        if rest > 0:
            time.sleep(rest)

    def wait_requests(self, timeout_s: float) -> bool:
        """Wait until no request is being answered (each until its response is closed)."""
        return self.app.extensions[INFLIGHT].wait_idle(timeout_s)

    def _stop(self, grace_s: float) -> None:
        """What a function does on stop; called once."""


_ALL_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE"]


class MisconfiguredRuntime(BaseRuntime):
    """The process of a function deployed with a setting it cannot use (a SettingsError while
    its runtime was built: a bad value, an unresolved func.yaml template). It stays up and says
    why, naming the variable: readiness and liveness answer 503 with the error (liveness too, so
    a cluster restarts the pod and shows it crash-looping), the log has it, and every other
    route answers 503 ``invalid_settings`` in the OpenAI shape, never a 500."""

    def __init__(self, function: str, error: SettingsError):
        super().__init__(function, ServerSettings(), HTTPMetrics())
        self.error = error
        self.reason = f"invalid settings: {error}"

        def refuse(path: str = ""):
            raise InvalidSettings(f"The function cannot serve: {self.reason}")

        self.app.add_url_rule("/", "invalid_settings", refuse, methods=_ALL_METHODS)
        self.app.add_url_rule("/<path:path>", "invalid_settings", refuse, methods=_ALL_METHODS)

    def _ready(self) -> tuple[bool, str]:
        return False, self.reason

    def alive(self) -> tuple[bool, str]:
        return False, self.reason


def build_runtime(function: str, create: Callable[[Mapping[str, str]], BaseRuntime],
                  cfg: Mapping[str, str]) -> BaseRuntime:
    """``create(cfg)``, the function's runtime; when its settings cannot be used (an unresolved
    func.yaml template in ``cfg`` included) a :class:`MisconfiguredRuntime` that says why.
    Both serving paths call this: func-python's (``LLMFunction.start``) and gunicorn's
    (``function.wsgi``)."""
    try:
        check_templates(cfg)
        return create(cfg)
    except SettingsError as err:
        log.error("%s cannot start: invalid settings: %s", function, err)
        return MisconfiguredRuntime(function, err)
