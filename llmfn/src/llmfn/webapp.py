"""The base Flask app every function shares: health, /metrics, auth, limits, errors, counting.

A function adds its own routes (its API) on top: its ``register(app, runtime)`` calls
``app.add_url_rule`` or uses ``@app.post`` (see ``llmfn.model_runtime.Register``). Routes that must
answer without a bearer key (probes, metrics, CloudEvents deliveries: the Broker sends no key)
are marked with :func:`public`. Model functions also get ``/v1/models`` (:func:`add_model_routes`).
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Callable, Protocol

from flask import Flask, Response, g, jsonify, request
from werkzeug.exceptions import RequestEntityTooLarge

from . import errors
from .auth import BearerAuth
from .errors import InvalidRequest, RequestTooLarge, UnsupportedMediaType
from .metrics import HTTPMetrics

if TYPE_CHECKING:  # audit imports this module and no model code
    from .host import ModelHost

_PUBLIC = "llmfn.public_endpoints"
INTERNAL_KEY = "llmfn.internal"
"""WSGI environ key marking a request the app made to itself (a request event served through
its API route): it was already let in by a public route, so it needs no bearer key."""


class Probes(Protocol):
    """What the health routes ask: the runtime's own answers."""

    def ready(self) -> tuple[bool, str]: ...

    def alive(self) -> tuple[bool, str]: ...


def create_base_app(name: str, *, max_request_bytes: int, probes: Probes,
                    metrics: HTTPMetrics, auth: BearerAuth | None = None) -> Flask:
    """A Flask app with the routes and checks shared by every function.

    Health answers as func-python's own probes do (200, or 500 with the reason as text), so the
    two serving paths agree.
    """
    app = Flask(name)
    app.config["MAX_CONTENT_LENGTH"] = max_request_bytes
    app.json.sort_keys = False
    app.extensions[_PUBLIC] = set()
    errors.register_flask(app)

    @app.before_request
    def _before():
        g.t0 = time.perf_counter()
        if (auth is not None and request.endpoint not in app.extensions[_PUBLIC]
                and not request.environ.get(INTERNAL_KEY)):
            auth.check(request.headers.get("Authorization"))

    @app.after_request
    def _count(resp: Response):
        rule = request.url_rule.rule if request.url_rule else "unmatched"
        metrics.requests.labels(route=rule, status=str(resp.status_code)).inc()
        if not resp.is_streamed:
            metrics.request_duration.labels(route=rule).observe(time.perf_counter() - g.t0)
        return resp

    def probe(check: Callable[[], tuple[bool, str]]) -> Response:
        ok, msg = check()
        return Response(msg, status=200 if ok else 500, mimetype="text/plain")

    public(app, "/health/liveness", "liveness", lambda: probe(probes.alive))
    public(app, "/health/readiness", "readiness", lambda: probe(probes.ready))

    def prometheus():
        body, ctype = metrics.render()
        return Response(body, content_type=ctype)

    public(app, "/metrics", "metrics", prometheus)
    return app


def public(app: Flask, rule: str, endpoint: str, view: Callable, *,
           methods: tuple[str, ...] = ("GET",)) -> None:
    """Add a route that answers without a bearer key."""
    app.add_url_rule(rule, endpoint, view, methods=list(methods))
    app.extensions[_PUBLIC].add(endpoint)


def add_model_routes(app: Flask, host: "ModelHost") -> None:
    """``/v1/models`` and ``/v1/models/<id>``: the one model this process serves."""
    created = int(time.time())

    @app.get("/v1/models")
    def models():
        return jsonify({"object": "list", "data": [model_card(host, created)]})

    @app.get("/v1/models/<path:model>")
    def model(model: str):
        if model != host.model_id:
            raise errors.ModelNotFound(f"The model '{model}' does not exist.", param="model")
        return jsonify(model_card(host, created))


def model_card(host: "ModelHost", created: int) -> dict:
    """One entry of /v1/models in OpenAI's shape."""
    return {"id": host.model_id, "object": "model", "created": created, "owned_by": "llmfn"}


def json_body() -> dict[str, Any]:
    """The request's JSON object, or a 400/415 naming what is wrong."""
    ctype = request.mimetype or ""
    if ctype and ctype != "application/json" and not ctype.endswith("+json"):
        raise UnsupportedMediaType("Content-Type must be application/json.")
    try:
        body = request.get_json(silent=True, force=True)
    except RequestEntityTooLarge:  # as an APIError, so the caller's error accounting sees it
        raise RequestTooLarge("Request body is too large.") from None
    if body is None:
        raise InvalidRequest("We could not parse the JSON body of your request. The OpenAI API "
                             "expects a JSON payload.")
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    return body


_MISSING = object()


def param(body: dict, name: str, kinds: tuple[type, ...], default: Any = _MISSING, *,
          lo: float | None = None, hi: float | None = None, nullable: bool = True) -> Any:
    """Read ``body[name]`` checking its JSON type and bounds; errors name the param."""
    value = body.get(name, None)
    if value is None:
        if name in body and not nullable:
            raise InvalidRequest(f"'{name}' must not be null.", param=name)
        if default is _MISSING:
            raise InvalidRequest(f"Missing required parameter: '{name}'.", param=name)
        return default
    if isinstance(value, bool) and bool not in kinds:
        ok = False
    else:
        ok = isinstance(value, kinds) or (float in kinds and isinstance(value, int))
    if not ok:
        names = " or ".join(_json_name(k) for k in kinds)
        raise InvalidRequest(f"'{name}' must be {names}, got {_json_name(type(value))}.",
                             param=name)
    if lo is not None and value < lo:
        raise InvalidRequest(f"'{name}' must be >= {lo}, got {value}.", param=name)
    if hi is not None and value > hi:
        raise InvalidRequest(f"'{name}' must be <= {hi}, got {value}.", param=name)
    return value


def _json_name(kind: type) -> str:
    return {str: "a string", int: "an integer", float: "a number", bool: "a boolean",
            list: "an array", dict: "an object", type(None): "null"}.get(kind, kind.__name__)


def check_model(body: dict, model_id: str) -> None:
    """`model` may be omitted; if given it must name the served model (404 otherwise)."""
    model = param(body, "model", (str,), None)
    if model is not None and model != model_id:
        raise errors.ModelNotFound(f"The model '{model}' does not exist or you do not have "
                                   "access to it.", param="model")
