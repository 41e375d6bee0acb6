"""Per-route error shapes (llmfn.errors.shape_errors) and the x-api-key header: a function whose
routes speak another API gets every error on them in that API's shape, the shared checks' (auth,
routing, body limits, stopping) included; other routes keep OpenAI's."""
from __future__ import annotations

import pytest
from flask import jsonify

from llmfn.auth import BearerAuth, KeyLimiter, key_id
from llmfn.errors import APIError, InvalidRequest, NotReady, Unauthorized, shape_errors
from llmfn.metrics import HTTPMetrics
from llmfn.webapp import create_base_app, json_body


def other_shape(err: APIError) -> dict:
    return {"type": "error", "error": {"type": f"other-{err.status}", "message": err.message}}


class Probes:
    stopping = False

    def ready(self):
        return True, "ok"

    def alive(self):
        return True, "ok"


@pytest.fixture
def app():
    probes = Probes()
    app = create_base_app("t", max_request_bytes=64, probes=probes, metrics=HTTPMetrics(),
                          auth=BearerAuth((b"k1",)), key_limiter=KeyLimiter(1))
    app.extensions["probes"] = probes
    for rule in ("/v1/other", "/v1/other/count", "/v1/others", "/v1/chat"):
        app.add_url_rule(rule, rule, lambda: jsonify(ok=True), methods=["POST"])
    app.add_url_rule("/v1/other/bad", "bad", _bad, methods=["POST"])
    app.add_url_rule("/v1/other/boom", "boom", _boom, methods=["POST"])
    app.add_url_rule("/v1/other/read", "read", lambda: jsonify(json_body()), methods=["POST"])
    app.add_url_rule("/v1/other/loading", "loading", _loading, methods=["POST"])
    shape_errors(app, "/v1/other", other_shape)
    return app


def _bad():
    raise InvalidRequest("no good", param="x")


def _boom():
    raise RuntimeError("secret detail")


def _loading():
    raise NotReady("The model is loading.", retry_after_s=2)


KEY = {"Authorization": "Bearer k1"}


@pytest.mark.parametrize(("method", "path", "headers", "kwargs", "status"), [
    ("post", "/v1/other", {}, {}, 401),
    ("post", "/v1/other/count", {"x-api-key": "wrong"}, {}, 401),
    ("post", "/v1/other/bad", KEY, {"json": {}}, 400),
    ("post", "/v1/other/boom", KEY, {"json": {}}, 500),
    ("post", "/v1/other/nothing-here", KEY, {}, 404),
    ("post", "/v1/other/read", KEY, {"json": {"x": "y" * 100}}, 413),
    ("post", "/v1/other/read", KEY, {"data": "x", "content_type": "text/plain"}, 415),
    ("post", "/v1/other/loading", KEY, {}, 503),
    ("get", "/v1/other", KEY, {}, 405),
])
def test_errors_in_the_routes_shape(app, method, path, headers, kwargs, status):
    r = getattr(app.test_client(), method)(path, headers=headers, **kwargs)
    assert r.status_code == status
    body = r.get_json()
    assert body["type"] == "error" and body["error"]["type"] == f"other-{status}"
    assert "secret" not in body["error"]["message"]


def test_other_routes_keep_openai_shape(app):
    c = app.test_client()
    for path in ("/v1/chat", "/v1/others"):  # /v1/others is not under /v1/other
        r = c.post(path)
        assert r.status_code == 401 and r.get_json()["error"]["type"] == "authentication_error"


def test_shutting_down_in_the_routes_shape(app):
    app.extensions["probes"].stopping = True
    r = app.test_client().post("/v1/other", headers=KEY)
    assert r.status_code == 503 and r.headers["Retry-After"]
    assert r.get_json()["error"]["type"] == "other-503"


def test_x_api_key_is_a_bearer_key(app):
    c = app.test_client()
    for path in ("/v1/chat", "/v1/other"):
        r = c.post(path, headers={"x-api-key": "k1"})
        assert r.status_code == 200
        r.close()  # releases the key's one slot (KeyLimiter(1))
    # the Authorization header, when sent, is the one checked
    assert c.post("/v1/chat", headers={"x-api-key": "k1", "Authorization": "Bearer no"}
                  ).status_code == 401


def test_key_limit_in_the_routes_shape(app):
    c = app.test_client()
    held = c.post("/v1/other", headers={"x-api-key": "k1"})  # not closed: holds the slot
    assert held.status_code == 200
    r = c.post("/v1/other/count", headers={"x-api-key": "k1"})
    assert r.status_code == 429 and r.get_json()["error"]["type"] == "other-429"
    held.close()


def test_check_with_api_key():
    auth = BearerAuth((b"a",))
    assert auth.check(None, "a") == key_id("a")
    for header, api_key in ((None, None), (None, " "), (None, "b"), ("Basic a", "a")):
        with pytest.raises(Unauthorized):
            auth.check(header, api_key)
