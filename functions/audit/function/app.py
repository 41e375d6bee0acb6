"""Flask app factory for the gunicorn path (`make run`): same AuditService as func.py."""
from __future__ import annotations

import threading

from flask import Flask, Response as FlaskResponse, request

from llmfn import errors

from .ingest import InvalidEvent, decode_http
from .service import AuditService, Response
from .settings import AuditSettings


def create_app(settings: AuditSettings, *, service: AuditService | None = None) -> Flask:
    """Build the app; the service starts on the first request (in the worker, after fork)."""
    app = Flask("audit")
    service = service or AuditService(settings)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_request_bytes
    app.extensions["audit.service"] = service
    app.extensions["llmfn.runtime"] = service  # gunicorn_conf's worker_exit calls .stop()
    errors.register_flask(app)
    started = threading.Lock()

    @app.before_request
    def _start_once():
        with started:
            service.start()  # idempotent

    def out(resp: Response) -> FlaskResponse:
        r = FlaskResponse(resp.body, status=resp.status, content_type=resp.content_type)
        for k, v in resp.headers.items():
            r.headers[k] = v
        return r

    @app.post("/")
    @app.post("/events")
    @app.post("/dead-letter")
    def post_event():
        if (request.content_length or 0) > settings.max_request_bytes:
            return out(service.too_large())
        body = request.get_data(cache=False)  # raises 413 past MAX_CONTENT_LENGTH (chunked)
        try:
            event = decode_http(dict(request.headers), body)
        except InvalidEvent as err:
            return out(service.invalid(err.problems))
        return out(service.post(request.path, event, len(body)))

    @app.get("/health/liveness")
    @app.get("/health/readiness")
    @app.get("/metrics")
    @app.get("/kpis")
    @app.get("/kpis/timeseries")
    def get_route():
        return out(service.get(request.path, request.args.to_dict()))

    return app
