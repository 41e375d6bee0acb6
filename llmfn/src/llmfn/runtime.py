"""BaseRuntime: the parts of one function process wired together behind one Flask app.

What every function has: server settings, request metrics, the base app (health, /metrics,
auth, errors), the lifecycle the platform drives (start, ready, alive, stop), and what its
contract (``llmfn.contract.FunctionSpec``) plugs in: its API and worker, its request events and
its page. :func:`build_runtime` builds it from the contract: a function with a model gets
``llmfn.model_runtime.Runtime`` (model host, /v1/models, inference events); one without (audit)
gets BaseRuntime and imports no model code.

Both serving paths build exactly one runtime per process: func-python's
(``llmfn.function.LLMFunction``) and gunicorn's (:func:`wsgi_app`). Nothing here is global.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

from flask import Flask

from . import event_requests, pages
from .auth import BearerAuth, KeyLimiter
from .contract import FunctionSpec, Worker
from .errors import InvalidSettings
from .metrics import HTTPMetrics, Metrics
from .settings import (
    EventSettings,
    ServerSettings,
    Settings,
    SettingsError,
    build,
    check_templates,
    environ_copy,
)
from .webapp import INFLIGHT, create_base_app

log = logging.getLogger(__name__)

BRIDGE_SPARE_THREADS = 16
"""Threads of func-python's bridge beyond running and queued requests: probes, metrics, 429s."""
REQUEST_TAIL_S = 5.0
"""After the worker is drained (or cancelled), what the responses still get to finish (their
last chunks and events) even when the grace is over."""


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
        self.service = Worker()
        self._stopping = False

    def plug(self, spec: FunctionSpec, settings: Any, events: EventSettings) -> None:
        """Add what ``spec`` declares: its API (its routes, whose worker becomes
        :attr:`service`), its request events on ``POST /`` and its page (and ``/docs``)."""
        self.service = spec.routes(self.app, self, settings)
        if spec.events:
            event_requests.register(self.app, self.function, events, spec.events)
        pages.register(self.app, *([spec.page] if spec.page else []))

    @property
    def capacity(self) -> int:
        """Requests that run at once (the rest wait in the queue of ``QUEUE_SIZE``)."""
        return self.service.capacity

    @property
    def bridge_threads(self) -> int:
        """Threads func-python's WSGI bridge needs: running + queued requests + spare."""
        return self.capacity + self.server.queue_size + BRIDGE_SPARE_THREADS

    def start(self) -> None:
        """Begin background work (pull weights, connect to a database); returns at once."""
        self.service.start()

    @property
    def stopping(self) -> bool:
        """True from the start of :meth:`stop` on: new requests get 503 + Retry-After."""
        return self._stopping

    def ready(self) -> tuple[bool, str]:
        if self._stopping:
            return False, "stopping"
        return self._ready()

    def _ready(self) -> tuple[bool, str]:
        return self.service.ready()

    def alive(self) -> tuple[bool, str]:
        return self.service.alive()

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
        """Let the requests admitted before the stop finish within the grace, then drain.

        New requests are refused from the start (:attr:`stopping`). The requests already
        admitted are waited for first, with the worker still taking their work: one that was
        admitted just before the signal but reaches the worker after it is run, not refused.
        Then the worker drains in what is left of the grace and cancels what still runs; a
        cancelled response gets REQUEST_TAIL_S to send its last bytes and its event."""
        deadline = time.monotonic() + grace_s
        idle = self.wait_requests(grace_s)
        drained = self.service.drain(max(deadline - time.monotonic(), 0.0))
        log.info("in-flight work %s", "finished" if drained else "cancelled after the grace")
        if not idle:
            self.wait_requests(REQUEST_TAIL_S)
        self._stopped()

    def _stopped(self) -> None:
        """After the drain (a model function flushes its inference events)."""


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


def create_runtime(spec: FunctionSpec, cfg: Mapping[str, str]) -> BaseRuntime:
    """The runtime of the function ``spec`` declares, configured by ``cfg`` (func's ``cfg`` or
    the environment) over its defaults; a SettingsError names a setting it cannot use."""
    check_templates(cfg)
    merged = spec.config(cfg)
    own = spec.settings(merged) if spec.settings is not None else None
    server = build(ServerSettings, merged)
    name = server.function or spec.name
    metrics = spec.metrics() if spec.metrics else None
    rt: BaseRuntime
    if spec.model is None:
        rt = BaseRuntime(name, server, metrics or HTTPMetrics())
        events = build(EventSettings, merged)
    else:
        from .model_runtime import Runtime  # here: a function without a model never loads it

        if metrics is not None and not isinstance(metrics, Metrics):
            raise TypeError(f"{spec.name}: a model function's metrics extend llmfn.metrics.Metrics")
        settings = Settings.from_mapping(merged)
        rt = Runtime(name, settings, loader=spec.model(merged), metrics=metrics)
        events = settings.events
    rt.plug(spec, own, events)
    return rt


def build_runtime(spec: FunctionSpec, cfg: Mapping[str, str]) -> BaseRuntime:
    """:func:`create_runtime`; when its settings cannot be used (an unresolved func.yaml
    template in ``cfg`` included) a :class:`MisconfiguredRuntime` that says why. Both serving
    paths call this: func-python's (``LLMFunction.start``) and gunicorn's (:func:`wsgi_app`)."""
    try:
        return create_runtime(spec, cfg)
    except SettingsError as err:
        log.error("%s cannot start: invalid settings: %s", spec.name, err)
        return MisconfiguredRuntime(spec.name, err)


def wsgi_app(spec: FunctionSpec) -> Flask:
    """gunicorn's app (``function.wsgi:app``): the started runtime of ``spec``, configured by
    the environment. Imported in the worker (no preload), so background work (the weight pull
    and model load, a database client) begins after fork; readiness reports it."""
    runtime = build_runtime(spec, environ_copy())
    runtime.start()
    return runtime.app
