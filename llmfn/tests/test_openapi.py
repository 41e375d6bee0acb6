"""llmfn.openapi: a function's document built from its protocol types and the shared parts."""
from typing import Annotated, Literal

import pytest
from openapi_spec_validator import validate

from llmfn import openapi
from llmfn.openapi import HTML, Operation, Param
from llmfn.protocol import UNSET, Meta, Model, Request, UnsetType


class EchoRequest(Request):
    """What to echo."""
    prompt: Annotated[str, Meta(description="the text")]
    n: Annotated[int, Meta(ge=1)] | UnsetType = UNSET


class Echo(Model):
    """The echo."""
    text: str
    object: Literal["echo"] = "echo"
    note: str | UnsetType = UNSET


class EchoChunk(Model):
    delta: str


OPS = [
    Operation("/", "get", "playground", "HTML playground", ("docs",), public=True, errors=(),
              content=HTML, returns="an HTML page"),
    Operation("/echo", "post", "echo", "Echo", ("echo",), request=EchoRequest, response=Echo,
              stream=EchoChunk, errors=(400, 401, 404, 429, 503), returns="the echo",
              headers=("X-Request-Id",)),
    Operation("/count", "get", "count", "Count", ("echo",), errors=(401,),
              parameters=(Param("since", description="ISO 8601"),),
              responses={400: openapi.error_response("a bad query (`code: invalid_query`)")}),
]


def test_document_is_valid_openapi_with_the_shared_groups():
    doc = openapi.document("t", "An echo.", OPS)
    validate(doc)
    assert doc["openapi"] == "3.1.0" and doc["info"]["description"].startswith("An echo.")
    assert set(doc["paths"]["/"]) == {"get", "post"}  # the page beside the request events
    assert {"/", "/v1/models", "/v1/models/{model}", "/health/liveness", "/health/readiness",
            "/metrics", "/docs", "/openapi.json", "/echo", "/count"} == set(doc["paths"])
    assert {"Error", "ModelCard", "ModelList", "StructuredCloudEvent", "EchoRequest", "Echo",
            "EchoChunk"} <= set(doc["components"]["schemas"])


def test_an_operation_is_described_from_its_types():
    doc = openapi.document("t", "An echo.", OPS, groups=())
    op = doc["paths"]["/echo"]["post"]
    assert op["security"] == [{}, {"bearerAuth": []}]
    assert op["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/EchoRequest"}
    ok = op["responses"]["200"]
    assert ok["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Echo"}
    assert "text/event-stream" in ok["content"] and "`data: [DONE]`" in ok["description"]
    assert ok["headers"]["X-Request-Id"] == {"$ref": "#/components/headers/XRequestId"}
    assert set(op["responses"]) == {"200", "400", "401", "404", "413", "415", "429", "500",
                                    "503"}
    schemas = doc["components"]["schemas"]
    assert schemas["EchoRequest"]["required"] == ["prompt"]
    assert schemas["EchoRequest"]["properties"]["prompt"]["description"] == "the text"
    assert schemas["EchoRequest"]["properties"]["n"]["minimum"] == 1
    assert schemas["Echo"]["required"] == ["text", "object"]  # a constant is always written
    assert schemas["Echo"]["description"] == "The echo."
    page = doc["paths"]["/"]["get"]
    assert "security" not in page and set(page["responses"]) == {"200"}
    count = doc["paths"]["/count"]["get"]
    assert count["parameters"] == [{"name": "since", "in": "query", "required": False,
                                    "schema": {"type": "string"}, "description": "ISO 8601"}]
    assert count["responses"]["400"]["description"].startswith("a bad query")
    assert set(doc["components"]["responses"]) == {
        "BadRequest", "Unauthorized", "NotFound", "RequestTooLarge", "UnsupportedMediaType",
        "TooManyRequests", "ServerError", "Unavailable"}
    validate(doc)


def test_a_route_is_described_once():
    with pytest.raises(ValueError, match="GET /metrics described twice"):
        openapi.document("t", "", [Operation("/metrics", "get", "m", "m", ("x",))])


def test_attach_serves_the_document():
    from flask import Flask

    app = Flask("t")
    doc = openapi.document("t", "", OPS)
    openapi.attach(app, doc)
    assert openapi.served(app) is doc


def test_attach_builds_a_lazy_document_once_on_first_use():
    from flask import Flask

    app, built = Flask("t"), []

    def build():
        built.append(1)
        return openapi.document("t", "", OPS)

    openapi.attach(app, build)
    assert built == []  # not at start: a cold start does not pay for it
    first = openapi.served(app)
    assert openapi.served(app) is first and built == [1]
    assert openapi.served(Flask("other")) is None


def test_a_type_named_like_a_shared_one_is_refused():
    class Error(Model):  # a function's own "Error" would take the shared responses' name
        reason: str

    op = Operation("/x", "get", "x", "x", ("x",), response=Error)
    with pytest.raises(ValueError, match="named Error"):
        openapi.document("t", "", [op], groups=())


def test_schema_names_come_from_msgspec():
    """Two types of one name (from two modules) are both written, each referenced by the name
    msgspec gives it."""
    First = type("Twin", (Model,), {"__annotations__": {"a": int}, "__module__": "m1"})
    Second = type("Twin", (Model,), {"__annotations__": {"b": str}, "__module__": "m2"})
    doc = openapi.document("t", "", [
        Operation("/a", "get", "a", "a", ("x",), response=First),
        Operation("/b", "get", "b", "b", ("x",), response=Second)], groups=())
    refs = [doc["paths"][p]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
            ["$ref"].rsplit("/", 1)[1] for p in ("/a", "/b")]
    assert len(set(refs)) == 2 and set(refs) <= set(doc["components"]["schemas"])
    assert "StructuredCloudEvent" not in doc["components"]["schemas"]  # no event route
    validate(doc)
