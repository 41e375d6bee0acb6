"""Typed API errors and their single mapping to HTTP in OpenAI's error shape.

Body: ``{"error": {"message", "type", "param", "code"}}`` as the OpenAI API returns it.
Unexpected exceptions are logged with their traceback and answered with a generic 500.
"""
from __future__ import annotations

import logging
from collections.abc import Callable

log = logging.getLogger(__name__)


class APIError(Exception):
    """An error a client caused or must know about, answered with ``status``."""
    status = 400
    type = "invalid_request_error"
    code: str | None = None

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None,
                 retry_after_s: int | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        self.retry_after_s = retry_after_s

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param,
                          "code": self.code}}

    def headers(self) -> dict[str, str]:
        if self.retry_after_s is None:
            return {}
        return {"Retry-After": str(int(self.retry_after_s))}


class InvalidRequest(APIError):
    """Malformed JSON, a wrong type or an out-of-range value (400)."""


class ContextLengthExceeded(APIError):
    """The prompt plus requested tokens do not fit the model's context (400)."""
    code = "context_length_exceeded"


class Unauthorized(APIError):
    status = 401
    type = "authentication_error"
    code = "invalid_api_key"


class NotFound(APIError):
    status = 404
    code = "not_found"


class ModelNotFound(APIError):
    status = 404
    code = "model_not_found"


class MethodNotAllowed(APIError):
    status = 405
    code = "method_not_allowed"


class RequestTooLarge(APIError):
    status = 413
    code = "request_too_large"


class UnsupportedMediaType(APIError):
    status = 415
    code = "unsupported_media_type"


class QueueFull(APIError):
    status = 429
    type = "rate_limit_error"
    code = "queue_full"


class ConcurrencyLimit(APIError):
    """One API key already has MAX_CONCURRENT_PER_KEY requests in flight (429)."""
    status = 429
    type = "rate_limit_error"
    code = "concurrency_limit_exceeded"


class NotReady(APIError):
    status = 503
    type = "service_unavailable"
    code = "model_not_ready"


class ShuttingDown(NotReady):
    """The process is stopping (SIGTERM, scale-down): retry, another instance will answer."""
    code = "shutting_down"

    def __init__(self, retry_after_s: int):
        super().__init__("The function is shutting down. Retry shortly.",
                         retry_after_s=retry_after_s)


class InvalidSettings(APIError):
    """The function was deployed with a setting it cannot use (the message names the variable):
    every route but health answers this until it is redeployed with a fixed value."""
    status = 503
    type = "service_unavailable"
    code = "invalid_settings"


class InternalError(APIError):
    status = 500
    type = "server_error"
    code = "internal_error"


def internal_error() -> InternalError:
    """The generic 500 sent for an unexpected exception (its text is never sent)."""
    return InternalError("The server had an error while processing your request.")


ErrorShape = Callable[[APIError], dict]
"""An error's JSON body in another API's shape (Anthropic's ``{"type": "error", ...}``)."""
SHAPES = "llmfn.error_shapes"
"""``app.extensions`` key: the (path prefix, :data:`ErrorShape`) pairs of :func:`shape_errors`."""


def shape_errors(app, prefix: str, shape: ErrorShape) -> None:
    """Answer every error on ``prefix`` and the paths under it (``prefix/...``) with
    ``shape(err)`` as the body, instead of OpenAI's shape: a function whose routes speak
    another API sets it for them, so the shared checks (auth 401, 404/405, 413/415, 429,
    not ready and shutting down 503, the generic 500) answer in that API's shape too."""
    app.extensions.setdefault(SHAPES, []).append((prefix.rstrip("/"), shape))


def body_for(app, path: str, err: APIError) -> dict:
    """``err``'s body for a request to ``path``: the shape :func:`shape_errors` set for it (the
    longest matching prefix), else OpenAI's."""
    best: tuple[str, ErrorShape] | None = None
    for prefix, shape in app.extensions.get(SHAPES, ()):
        if (path == prefix or path.startswith(prefix + "/")) and (
                best is None or len(prefix) > len(best[0])):
            best = (prefix, shape)
    return err.body() if best is None else best[1](err)


def register_flask(app) -> None:
    """Map every error raised in ``app`` to a JSON response: OpenAI's shape, or the one
    :func:`shape_errors` set for the request's path."""
    from flask import jsonify, request
    from werkzeug.exceptions import HTTPException

    def respond(err: APIError):
        resp = jsonify(body_for(app, request.path, err))
        resp.status_code = err.status
        for k, v in err.headers().items():
            resp.headers[k] = v
        return resp

    @app.errorhandler(APIError)
    def _api_error(err: APIError):
        return respond(err)

    @app.errorhandler(HTTPException)
    def _http_error(err: HTTPException):
        mapping: dict[int | None, APIError] = {
            404: NotFound("Unknown URL: no such route."),
            405: MethodNotAllowed("Method not allowed on this route."),
            413: RequestTooLarge("Request body is too large."),
            415: UnsupportedMediaType("Content-Type must be application/json.")}
        api = mapping.get(err.code)
        if api is None:
            api = APIError(err.description or err.name)
            api.status = err.code or 400
        return respond(api)

    @app.errorhandler(Exception)
    def _unexpected(err: Exception):
        log.exception("unhandled error")
        return respond(internal_error())
