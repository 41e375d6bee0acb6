"""embed's OpenAPI document (function/openapi.json + llmfn's shared parts) is served at
/openapi.json, is valid OpenAPI 3.1 and describes exactly the app's routes."""
from __future__ import annotations

from llmfn import openapi

from function import api
from tests.support import openapi_routes


def test_openapi_document_matches_the_app(make_runtime):
    rt = make_runtime(wait=False)
    r = rt.app.test_client().get("/openapi.json")
    assert r.status_code == 200 and r.mimetype == "application/json"
    doc = r.get_json()
    assert doc == openapi.load(api.OPENAPI)
    openapi_routes.check(rt.app, doc)
    assert {("POST", "/v1/embeddings"), ("POST", "/"), ("GET", "/v1/models")} <= \
        openapi_routes.document_operations(doc)
