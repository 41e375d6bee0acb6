"""The base Flask app every function shares: health, /metrics, auth, limits, errors, counting.

A function adds its own routes (its API) on top: its contract's ``routes`` (``llmfn.contract``)
adds its API routes with ``llmfn.routes.add``, others with ``app.add_url_rule``. Routes that must
answer without a bearer key (probes, metrics, CloudEvents deliveries: the Broker sends no key)
are marked with :func:`public`. Model functions also get ``/v1/models`` (:func:`add_model_routes`).
"""
from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from flask import Flask, Response, jsonify, request
from flask.json.provider import DefaultJSONProvider
from werkzeug.exceptions import RequestEntityTooLarge

from . import errors, openapi
from .auth import BearerAuth, KeyLimiter
from .errors import InvalidRequest, RequestTooLarge, UnsupportedMediaType
from .metrics import HTTPMetrics
from .origin import KEY_ID_KEY
from .protocol import Request, decode, to_builtins
from .shapes import ModelCard, ModelList

if TYPE_CHECKING:  # audit imports this module and no model code
    from .host import ModelHost

_PUBLIC = "llmfn.public_endpoints"
_PROBES = ("liveness", "readiness", "metrics")  # answered while the runtime stops
INFLIGHT = "llmfn.inflight"
_STATE = "llmfn.request_state"  # per request, in its environ


class InFlight:
    """How many requests are being answered; :meth:`wait_idle` until none is."""

    def __init__(self):
        self._n = 0
        self._cond = threading.Condition()

    def enter(self) -> None:
        with self._cond:
            self._n += 1

    def leave(self) -> None:
        with self._cond:
            self._n -= 1
            self._cond.notify_all()

    def wait_idle(self, timeout_s: float) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self._n <= 0, timeout=max(0.0, timeout_s))


class Probes(Protocol):
    """What the health routes ask: the runtime's own answers."""

    def ready(self) -> tuple[bool, str]: ...

    def alive(self) -> tuple[bool, str]: ...


def create_base_app(name: str, *, max_request_bytes: int, probes: Probes,
                    metrics: HTTPMetrics, auth: BearerAuth | None = None,
                    key_limiter: KeyLimiter | None = None, retry_after_s: int = 2) -> Flask:
    """A Flask app with the routes and checks shared by every function.

    Health answers 200, or 503 with the reason as text (func-python's own probe answers 500:
    any non-2xx is "not ready" to the kubelet). While the runtime stops (``probes.stopping``),
    every request but health and metrics gets 503 + ``Retry-After``: another instance answers.

    A request with a valid key gets its key id in ``environ[KEY_ID_KEY]`` (the inference
    event's ``key_id``); with ``key_limiter`` it counts against its key until its response is
    closed (a stream: when it ends), and one over the limit is answered 429.

    ``app.extensions["llmfn.inflight"]`` counts the requests being answered, each until its
    response is closed, so a stop can wait for the last stream and its event.
    """
    app = Flask(name)
    app.config["MAX_CONTENT_LENGTH"] = max_request_bytes
    assert isinstance(app.json, DefaultJSONProvider)  # Flask's own: it has sort_keys
    app.json.sort_keys = False
    app.extensions[_PUBLIC] = set()
    inflight = app.extensions[INFLIGHT] = InFlight()
    errors.register_flask(app)

    @app.before_request
    def _before():
        state = request.environ[_STATE] = {"t0": time.perf_counter()}
        inflight.enter()
        state["inflight"] = True
        if getattr(probes, "stopping", False) and request.endpoint not in _PROBES:
            raise errors.ShuttingDown(retry_after_s)
        if auth is not None and request.endpoint not in app.extensions[_PUBLIC]:
            kid = auth.check(request.headers.get("Authorization"),
                             request.headers.get("x-api-key"))
            request.environ[KEY_ID_KEY] = kid
            if kid is not None and key_limiter is not None and key_limiter.limit:
                key_limiter.acquire(kid)
                state["limited_key"] = kid

    @app.after_request
    def _count(resp: Response):
        state = request.environ.get(_STATE, {})
        if resp.is_streamed and state.pop("inflight", False):  # counted until the stream ends
            resp.call_on_close(inflight.leave)
        kid = state.pop("limited_key", None)
        if kid is not None and key_limiter is not None:  # released once, when it is closed
            resp.call_on_close(lambda: key_limiter.release(kid))
        rule = request.url_rule.rule if request.url_rule else "unmatched"
        metrics.requests.labels(route=rule, status=str(resp.status_code)).inc()
        if not resp.is_streamed:
            metrics.request_duration.labels(route=rule).observe(
                time.perf_counter() - state.get("t0", time.perf_counter()))
        return resp

    @app.teardown_request
    def _done(_exc):
        if request.environ.get(_STATE, {}).pop("inflight", False):
            inflight.leave()

    def probe(check: Callable[[], tuple[bool, str]]) -> Response:
        ok, msg = check()
        return Response(msg, status=200 if ok else 503, mimetype="text/plain")

    public(app, "/health/liveness", "liveness", lambda: probe(probes.alive))
    public(app, "/health/readiness", "readiness", lambda: probe(probes.ready))

    def prometheus():
        body, ctype = metrics.render()
        return Response(body, content_type=ctype)

    public(app, "/metrics", "metrics", prometheus)

    def openapi_document():  # the function's, set by llmfn.openapi.attach
        doc = openapi.served(app)
        if doc is None:
            raise errors.NotFound("Unknown URL: no such route.")
        return jsonify(doc)

    public(app, "/openapi.json", "openapi", openapi_document)
    return app


def public(app: Flask, rule: str, endpoint: str, view: Callable, *,
           methods: tuple[str, ...] = ("GET",)) -> None:
    """Add a route that answers without a bearer key."""
    app.add_url_rule(rule, endpoint, view, methods=list(methods))
    app.extensions[_PUBLIC].add(endpoint)


def add_model_routes(app: Flask, host: ModelHost) -> None:
    """``/v1/models`` and ``/v1/models/<id>``: the one model this process serves."""
    created = int(time.time())

    @app.get("/v1/models")
    def models():
        return jsonify(to_builtins(ModelList(data=[model_card(host, created)])))

    @app.get("/v1/models/<path:model>")
    def model(model: str):
        if model != host.model_id:
            raise errors.ModelNotFound(f"The model '{model}' does not exist.", param="model")
        return jsonify(to_builtins(model_card(host, created)))


def model_card(host: ModelHost, created: int) -> ModelCard:
    """One entry of /v1/models in OpenAI's shape."""
    return ModelCard(id=host.model_id, created=created)


def json_body() -> dict[str, Any]:
    """The request's JSON object, or a 400/415 naming what is wrong."""
    ctype = request.mimetype or ""
    if ctype and ctype != "application/json" and not ctype.endswith("+json"):
        raise UnsupportedMediaType("Content-Type must be application/json.")
    try:
        body = request.get_json(silent=True, force=True)
    except RequestEntityTooLarge:  # as an APIError, so the caller's error accounting sees it
        raise RequestTooLarge("Request body is too large.") from None
    except RecursionError:  # silent=True catches only ValueError; [[[[... is not one
        raise InvalidRequest("The JSON body of your request is nested too deeply.") from None
    if body is None:
        raise InvalidRequest("We could not parse the JSON body of your request. The OpenAI API "
                             "expects a JSON payload.")
    return checked_body(body)


def checked_body(body: Any) -> dict[str, Any]:
    """A parsed JSON body (an HTTP body, a request event's data) if it is an object of text,
    else a 400 naming what is wrong."""
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    bad = _invalid_unicode(body)
    if bad is not None:  # shown escaped: a key may hold the surrogate too
        bad = bad.encode("utf-8", "backslashreplace").decode("utf-8")
        raise InvalidRequest(f"'{bad}' is not valid Unicode: it holds a lone surrogate (such as "
                             "\\ud800), which has no UTF-8 encoding.",
                             param=bad.split("[", 1)[0].split(".", 1)[0])
    return body


def _invalid_unicode(body: dict) -> str | None:
    """The path (``messages[0].content``) of the first string or key holding a lone surrogate:
    valid JSON (``"\\ud800"``) but no text, so tokenizers and UTF-8 encoders fail on it."""
    try:
        json.dumps(body, ensure_ascii=False).encode("utf-8")
        return None
    except UnicodeEncodeError:
        pass
    stack: list[tuple[str, Any]] = [(k, v) for k, v in reversed(body.items())]
    while stack:
        path, value = stack.pop()
        if not _encodes(path):
            return path
        if isinstance(value, str) and not _encodes(value):
            return path
        if isinstance(value, dict):
            stack.extend((f"{path}.{k}", v) for k, v in reversed(value.items()))
        elif isinstance(value, list):
            stack.extend((f"{path}[{i}]", v) for i, v in reversed(list(enumerate(value))))
    return None


def _encodes(text: str) -> bool:
    try:
        text.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


class _Named(Request, forbid_unknown_fields=False):
    """The one field :func:`check_model` reads of a request body."""
    model: str | None = None


def check_model(body: dict, model_id: str) -> None:
    """`model` may be omitted; if given it must name the served model (404 otherwise)."""
    model = decode(_Named, body).model
    if model is not None and model != model_id:
        raise errors.ModelNotFound(f"The model '{model}' does not exist or you do not have "
                                   "access to it.", param="model")
