"""audit's OpenAPI document (function/openapi.json + llmfn's shared parts) is served at
/openapi.json, is valid OpenAPI 3.1 and describes exactly the app's routes."""
from __future__ import annotations

from audit_function import api
from audit_function.func import create_runtime
from tests.support import openapi_routes


def test_openapi_document_matches_the_app():
    rt = create_runtime({"MONGODB_URI": "mongodb://127.0.0.1:9/", "MONGODB_TIMEOUT_MS": "100"})
    doc = openapi_routes.served_document(rt.app, api)
    assert {("POST", "/"), ("POST", "/events"), ("POST", "/dead-letter"), ("GET", "/kpis"),
            ("GET", "/kpis/timeseries")} <= openapi_routes.document_operations(doc)
