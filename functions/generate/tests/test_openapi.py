"""generate's OpenAPI document (function/openapi.json + llmfn's shared parts) is served at
/openapi.json, is valid OpenAPI 3.1 and describes exactly the app's routes."""
from __future__ import annotations

from function import api
from tests.support import openapi_routes


def test_openapi_document_matches_the_app(make_runtime):
    rt = make_runtime(wait=False)
    doc = openapi_routes.served_document(rt.app, api)
    ops = openapi_routes.document_operations(doc)
    assert {("POST", "/v1/chat/completions"), ("POST", "/"), ("GET", "/v1/models/{model}"),
            ("GET", "/openapi.json")} <= ops
    streamed = doc["paths"]["/v1/chat/completions"]["post"]["responses"]["200"]["content"]
    assert set(streamed) == {"application/json", "text/event-stream"}
