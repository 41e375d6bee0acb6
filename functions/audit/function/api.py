"""audit's HTTP surface: CloudEvents in (`POST /`, `/dead-letter`), KPIs out (`GET /kpis`).

Everything else (health, /metrics, errors in OpenAI's shape, body limits, auth) is the shared
base app's. Event routes are public: the Broker sends no bearer key, and Knative does not retry
a 401. With ``API_KEYS`` set, the KPI queries need a key.
"""
from __future__ import annotations

from flask import Flask, jsonify, request

from llmfn import openapi
from llmfn.ce_http import InvalidEvent, decode_http
from llmfn.runtime import BaseRuntime
from llmfn.webapp import public

from . import protocol
from .service import AuditMetrics, AuditService
from .settings import AuditSettings

EVENT_PATHS = ("/", "/events")
DEAD_LETTER_PATH = "/dead-letter"


def register(app: Flask, runtime: BaseRuntime, settings: AuditSettings) -> AuditService:
    """Add audit's routes to the base ``app`` (the contract's ``routes``, func.py); returns the
    service, its worker."""
    assert isinstance(runtime.metrics, AuditMetrics)  # the contract's metrics
    service = AuditService(settings, retry_after_s=runtime.server.retry_after_s,
                           metrics=runtime.metrics)

    def decode():
        body = request.get_data(cache=False)  # 413 past MAX_CONTENT_LENGTH (chunked too)
        try:
            return decode_http(dict(request.headers), body)
        except InvalidEvent as err:
            raise service.ingestor.invalid(err, reason="decode") from None

    def record():
        return jsonify(service.record(decode()))

    def dead_letter():
        return jsonify(service.dead_letter(decode()))

    for path in EVENT_PATHS:
        public(app, path, f"record{path.replace('/', '_')}", record, methods=("POST",))
    public(app, DEAD_LETTER_PATH, "dead_letter", dead_letter, methods=("POST",))
    openapi.attach(app, lambda: openapi.function_document(protocol))  # on first GET

    @app.get("/kpis")
    @app.get("/kpis/timeseries")
    def kpis():
        return jsonify(service.kpis(request.path, request.args.to_dict()))

    return service
