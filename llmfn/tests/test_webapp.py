"""The base app every function shares: probes, /metrics, auth and public routes, request
parsing (json_body, check_model), request counting; /v1/models for model functions."""
from __future__ import annotations

from typing import Annotated

import pytest
from flask import Flask

from llmfn.auth import BearerAuth
from llmfn.errors import APIError, ModelNotFound, register_flask
from llmfn.host import ModelHost
from llmfn.metrics import Metrics
from llmfn.protocol import Meta, Request, decode
from llmfn.settings import Settings
from llmfn.webapp import add_model_routes, check_model, create_base_app, json_body, public

WAIT_S = 30


class Echo(Request, forbid_unknown_fields=False):
    n: Annotated[int, Meta(ge=1, le=3)] = 1


@pytest.fixture
def loaded(tmp_path):
    """A base app whose host loaded a file (the loader returns its path: no model needed)."""
    weights = tmp_path / "m.gguf"
    weights.write_bytes(b"GGUF")
    settings = Settings.from_mapping({"MODEL_URI": f"file://{weights}", "MODEL_NAME": "m1",
                                      "MODEL_CACHE_DIR": str(tmp_path / "c"),
                                      "MAX_REQUEST_BYTES": "64"})
    host = ModelHost(settings, lambda path, model: path)
    metrics = Metrics()
    app = create_base_app("t", max_request_bytes=settings.server.max_request_bytes,
                          probes=host, metrics=metrics, auth=BearerAuth((b"k1",)))
    add_model_routes(app, host)

    @app.post("/echo")
    def echo():
        body = json_body()
        check_model(body, host.model_id)
        return {"n": decode(Echo, body).n}

    host.start()
    assert host.wait(WAIT_S)
    return app, metrics


def test_probes_and_metrics_stay_open_with_auth(loaded):
    app, _ = loaded
    c = app.test_client()
    assert c.get("/health/liveness").status_code == 200
    assert c.get("/health/readiness").get_data(as_text=True) == "ready"
    assert c.get("/metrics").status_code == 200
    assert c.get("/v1/models").status_code == 401


def test_models_list_and_card(loaded):
    c = loaded[0].test_client()
    auth = {"Authorization": "Bearer k1"}
    listed = c.get("/v1/models", headers=auth).get_json()
    assert [m["id"] for m in listed["data"]] == ["m1"] and listed["object"] == "list"
    assert c.get("/v1/models/m1", headers=auth).get_json()["owned_by"] == "llmfn"
    missing = c.get("/v1/models/other", headers=auth)
    assert missing.status_code == 404 and missing.get_json()["error"]["param"] == "model"


@pytest.mark.parametrize("kwargs, status, param_name", [
    ({"json": {"n": 2}}, 200, None),
    ({"json": {"n": 4}}, 400, "n"),
    ({"json": {"n": True}}, 400, "n"),
    ({"json": {"n": 1.5}}, 400, "n"),
    ({"json": {"model": "other"}}, 404, "model"),
    ({"json": [1]}, 400, None),
    ({"data": "{not json", "content_type": "application/json"}, 400, None),
    ({"data": "n=1", "content_type": "text/plain"}, 415, None),
    ({"json": {"pad": "x" * 100}}, 413, None),
])
def test_request_parsing_errors_name_the_param(loaded, kwargs, status, param_name):
    app, metrics = loaded
    r = app.test_client().post("/echo", headers={"Authorization": "Bearer k1"}, **kwargs)
    assert r.status_code == status, r.get_data(as_text=True)
    if status != 200:
        assert r.get_json()["error"]["param"] == param_name
    counted = metrics.render()[0].decode()
    assert f'llmfn_requests_total{{route="/echo",status="{status}"}} 1.0' in counted


def test_error_mapping_in_one_place():
    """APIError subclasses keep their status, code and Retry-After; routing errors and
    unexpected exceptions get the OpenAI shape too (never the exception text)."""
    app = Flask("errors")
    register_flask(app)

    @app.get("/model")
    def model():
        raise ModelNotFound("nope", param="model")

    @app.get("/busy")
    def busy():
        raise APIError("later", code="x", retry_after_s=7)

    @app.get("/boom")
    def boom():
        raise RuntimeError("secret detail")

    c = app.test_client()
    r = c.get("/model")
    assert r.status_code == 404 and r.get_json()["error"]["code"] == "model_not_found"
    r = c.get("/busy")
    assert r.status_code == 400 and r.headers["Retry-After"] == "7"
    r = c.post("/model")
    assert r.status_code == 405 and r.get_json()["error"]["code"] == "method_not_allowed"
    r = c.get("/nowhere")
    assert r.status_code == 404 and r.get_json()["error"]["code"] == "not_found"
    r = c.get("/boom")
    assert r.status_code == 500 and "secret" not in r.get_data(as_text=True)
    assert set(r.get_json()["error"]) == {"message", "type", "param", "code"}


def test_public_routes_answer_without_a_key(loaded):
    app, _ = loaded
    public(app, "/open", "open", lambda: "yes", methods=("POST",))
    c = app.test_client()
    assert c.post("/open").get_data(as_text=True) == "yes"
    assert c.post("/echo", json={}).status_code == 401


def test_probes_answer_503_with_the_reason():
    """Not ready (or not alive): 503 with the reason as text."""
    class Probes:
        def ready(self):
            return False, "loading"

        def alive(self):
            return False, "load failed"

    app = create_base_app("t", max_request_bytes=10, probes=Probes(), metrics=Metrics())
    c = app.test_client()
    for path, text in (("/health/readiness", "loading"), ("/health/liveness", "load failed")):
        r = c.get(path)
        assert (r.status_code, r.get_data(as_text=True), r.mimetype) == (503, text, "text/plain")


# -- hostile input: a clear 400 in OpenAI's shape, never a 500 -------------------------------
DEEP = b"[" * 100_000 + b"]" * 100_000  # past the JSON decoder's recursion limit


@pytest.fixture
def parsing_app():
    """A base app with one JSON route and room for large bodies."""
    app = create_base_app("t", max_request_bytes=1 << 20, probes=None, metrics=Metrics())

    @app.post("/echo")
    def echo():
        return {"keys": sorted(json_body())}

    return app


@pytest.mark.parametrize("body", [DEEP, b'{"a":' * 50_000 + b"1" + b"}" * 50_000])
def test_deeply_nested_json_is_a_400(parsing_app, body):
    r = parsing_app.test_client().post("/echo", data=body, content_type="application/json")
    assert r.status_code == 400, r.get_data(as_text=True)
    err = r.get_json()["error"]
    assert "nested too deeply" in err["message"] and err["type"] == "invalid_request_error"


@pytest.mark.parametrize("raw,param,where", [
    (b'{"prompt": "\\ud800"}', "prompt", "'prompt'"),
    (b'{"messages": [{"role": "user", "content": "ok"}, {"role": "user", "content": "a\\udfffb"}]}',
     "messages", "'messages[1].content'"),
    (b'{"input": ["fine", "\\ud800"]}', "input", "'input[1]'"),
    (b'{"logit_bias": {"\\ud800": 1}}', "logit_bias", "'logit_bias.\\ud800'"),
    (b'{"\\udc00": 1}', "\\udc00", "'\\udc00'"),
])
def test_lone_surrogates_are_a_400_naming_the_param(parsing_app, raw, param, where):
    """Valid JSON, no text: a lone surrogate has no UTF-8 encoding (tokenizers fail on it)."""
    r = parsing_app.test_client().post("/echo", data=raw, content_type="application/json")
    assert r.status_code == 400, r.get_data(as_text=True)
    err = r.get_json()["error"]
    assert err["param"] == param and err["message"].startswith(where), err


def test_surrogate_pairs_are_text(parsing_app):
    r = parsing_app.test_client().post("/echo", data=b'{"prompt": "\\ud83d\\ude00"}',
                                       content_type="application/json")
    assert r.status_code == 200 and r.get_json() == {"keys": ["prompt"]}


def test_openapi_json_serves_the_attached_document(parsing_app):
    from llmfn import openapi

    c = parsing_app.test_client()
    assert c.get("/openapi.json").status_code == 404  # nothing attached
    openapi.attach(parsing_app, openapi.document("t", "", [
        openapi.Operation("/echo", "post", "echo", "Echo", ("echo",))], groups=("base",)))
    r = c.get("/openapi.json")
    assert r.status_code == 200
    served = r.get_json()
    assert {"/echo", "/health/liveness", "/metrics", "/openapi.json"} <= set(served["paths"])
    assert "Error" in served["components"]["schemas"]
