"""embed's OpenAPI document, regenerated from its protocol types (function/protocol.py and
llmfn's shared parts), is served at /openapi.json, is valid OpenAPI 3.1 and describes exactly
the app's routes."""
from __future__ import annotations

from tests.support import openapi_routes


def test_openapi_document_matches_the_app(make_runtime):
    rt = make_runtime(wait=False)
    doc = openapi_routes.served_document(rt.app, "embed")
    assert {("POST", "/v1/embeddings"), ("POST", "/"), ("GET", "/"), ("GET", "/v1/models")} <= \
        openapi_routes.document_operations(doc)
    body = doc["paths"]["/v1/embeddings"]["post"]["requestBody"]["content"]["application/json"]
    assert body["schema"] == {"$ref": "#/components/schemas/EmbeddingRequest"}
    assert "input" in doc["components"]["schemas"]["EmbeddingRequest"]["required"]
