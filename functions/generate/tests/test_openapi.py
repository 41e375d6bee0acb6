"""generate's OpenAPI document, regenerated from its protocol types (function/protocol.py and
llmfn's shared parts), is served at /openapi.json, is valid OpenAPI 3.1 and describes exactly
the app's routes; the types it names are the ones the code validates and answers with."""
from __future__ import annotations

from function import protocol
from tests.support import openapi_routes


def test_openapi_document_matches_the_app(make_runtime):
    rt = make_runtime(wait=False)
    doc = openapi_routes.served_document(rt.app, "generate")
    ops = openapi_routes.document_operations(doc)
    assert {("POST", "/v1/chat/completions"), ("POST", "/"), ("GET", "/"),
            ("GET", "/v1/models/{model}"), ("GET", "/openapi.json")} <= ops
    streamed = doc["paths"]["/v1/chat/completions"]["post"]["responses"]["200"]["content"]
    assert set(streamed) == {"application/json", "text/event-stream"}
    assert streamed["text/event-stream"]["x-llmfn-chunk"] == {
        "$ref": "#/components/schemas/ChatCompletionChunk"}
    schemas = doc["components"]["schemas"]
    chat = schemas["ChatCompletionRequest"]
    assert chat["required"] == ["messages"] and chat["additionalProperties"] is False
    assert set(chat["properties"]) == set(protocol.CHAT_PARAMETERS)
    assert set(schemas["CompletionRequest"]["properties"]) == set(protocol.COMPLETION_PARAMETERS)
    assert chat["properties"]["audio"]["description"] == \
        f"400 unless null: {protocol.REJECTED_WHY['audio']}"
