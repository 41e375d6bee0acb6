"""/v1/embeddings through the Flask app on the real model: shapes, formats, limits, events."""
from __future__ import annotations

import base64
import json

import numpy as np
import pytest

from tests.support.eventsink import running_receiver

MODEL = "all-minilm-l6-v2-f16"


def embed(client, **body):
    return client.post("/v1/embeddings", json=body)


def vectors(resp) -> np.ndarray:
    return np.array([d["embedding"] for d in resp.get_json()["data"]], dtype=np.float32)


def assert_error(resp, status: int, param: str | None, code: str | None = None):
    assert resp.status_code == status, resp.get_json()
    err = resp.get_json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    assert err["param"] == param and err["code"] == code
    return err


def test_openai_shape_and_usage(client):
    r = embed(client, input=["The cat sits on the mat.", "A cat is sitting on a rug."],
              model=MODEL, user="someone")
    body = r.get_json()
    assert r.status_code == 200 and r.headers["X-Request-Id"]
    assert list(body) == ["object", "data", "model", "usage"]
    assert body["object"] == "list" and body["model"] == MODEL
    assert [(d["object"], d["index"]) for d in body["data"]] == [("embedding", 0),
                                                                   ("embedding", 1)]
    v = vectors(r)
    assert v.shape == (2, 384) and np.allclose(np.linalg.norm(v, axis=1), 1, atol=1e-5)
    assert float(v[0] @ v[1]) > 0.5  # paraphrases
    assert body["usage"]["prompt_tokens"] == body["usage"]["total_tokens"] == 9 + 10


def test_a_string_is_one_input_and_dimensions_equal_is_accepted(client):
    r = embed(client, input="hello world", dimensions=384)
    assert r.status_code == 200 and len(r.get_json()["data"]) == 1


def test_base64_is_little_endian_float32_of_the_same_vector(client):
    text = "Knative autoscales services based on request concurrency."
    floats = vectors(embed(client, input=text))[0]
    b64 = embed(client, input=text, encoding_format="base64").get_json()["data"][0]["embedding"]
    decoded = np.frombuffer(base64.b64decode(b64), dtype="<f4")
    assert np.allclose(decoded, floats, atol=1e-6)


def test_token_ids_are_used_as_given(client, runtime):
    engine = runtime.host.model
    ids = engine.tokenize("Le chat est assis sur le tapis.")
    by_text = vectors(embed(client, input="Le chat est assis sur le tapis."))[0]
    one = embed(client, input=ids)
    many = embed(client, input=[ids, ids[:3]])
    assert one.get_json()["usage"]["prompt_tokens"] == len(ids)
    assert float(vectors(one)[0] @ by_text) > 0.9999
    assert len(many.get_json()["data"]) == 2
    assert many.get_json()["usage"]["prompt_tokens"] == len(ids) + 3


def test_empty_string_is_embedded_not_rejected(client):
    """Documented choice (docs/embeddings.md): "" is [CLS] [SEP], as sentence-transformers."""
    r = embed(client, input=["", "x"])
    assert r.status_code == 200 and r.get_json()["usage"]["prompt_tokens"] == 2 + 3


@pytest.mark.parametrize("body,param", [
    ({}, "input"),
    ({"input": None}, "input"),
    ({"input": []}, "input"),
    ({"input": 3}, "input"),
    ({"input": ["a", 1]}, "input"),
    ({"input": [1, -2]}, "input"),
    ({"input": [True]}, "input"),
    ({"input": [[1, 2], []]}, "input[1]"),
    ({"input": [[1, 2], ["a"]]}, "input[1]"),
    ({"input": [[5], [1, 10 ** 6]]}, "input[1]"),
    ({"input": "x", "encoding_format": "int8"}, "encoding_format"),
    ({"input": "x", "dimensions": 128}, "dimensions"),
    ({"input": "x", "dimensions": "384"}, "dimensions"),
    ({"input": "x", "user": 5}, "user"),
])
def test_invalid_requests_are_400_naming_the_param(client, body, param):
    assert_error(client.post("/v1/embeddings", json=body), 400, param)


def test_unknown_model_is_404(client):
    assert_error(embed(client, input="x", model="text-embedding-3-small"), 404, "model",
                 "model_not_found")


def test_too_many_inputs(client):
    """MAX_INPUTS is 8 in this module's runtime (OpenAI's 2048 by default)."""
    assert embed(client, input=["x"] * 8).status_code == 200
    err = assert_error(embed(client, input=["x"] * 9), 400, "input")
    assert "at most 8" in err["message"]


def test_over_long_input_names_its_index(client):
    err = assert_error(embed(client, input=["short", "word " * 600]), 400, "input[1]",
                       "context_length_exceeded")
    assert "input 1 has 602 tokens" in err["message"] and "512" in err["message"]
    assert_error(embed(client, input=[list(range(1000, 1513))]), 400, "input[0]",
                 "context_length_exceeded")


def test_truncate_setting_cuts_instead(make_runtime):
    client = make_runtime(TRUNCATE="true").app.test_client()
    texts = embed(client, input=["word " * 600, "word"])
    assert texts.status_code == 200
    assert texts.get_json()["usage"]["prompt_tokens"] == 512 + 3
    ids = embed(client, input=[list(range(1000, 1600))])
    assert ids.get_json()["usage"]["prompt_tokens"] == 512


def test_request_bytes_limit_is_413(client):
    r = client.post("/v1/embeddings", data=json.dumps({"input": "a " * 40000}),
                    content_type="application/json")
    assert_error(r, 413, None, "request_too_large")


def test_not_json_and_wrong_media_type(client):
    assert_error(client.post("/v1/embeddings", data="{", content_type="application/json"),
                 400, None)
    assert_error(client.post("/v1/embeddings", data="input=x", content_type="text/plain"), 415,
                 None, "unsupported_media_type")


def test_models_metrics_and_readiness_come_from_the_base_app(client):
    assert client.get("/v1/models").get_json()["data"][0]["id"] == MODEL
    assert client.get("/health/readiness").status_code == 200
    embed(client, input=["a", "b"])
    metrics = client.get("/metrics").data.decode()
    assert "llmfn_embed_batch_inputs_bucket" in metrics
    assert 'llmfn_requests_total{route="/v1/embeddings",status="200"}' in metrics


def test_not_ready_is_503(make_runtime, tmp_path):
    rt = make_runtime(wait=False, MODEL_URI=f"file://{tmp_path}/missing.gguf")
    rt.host.wait(30)
    r = embed(rt.app.test_client(), input="x")
    assert_error(r, 503, None, "model_not_ready")


def test_auth_as_generate(make_runtime):
    client = make_runtime(API_KEYS="k1").app.test_client()
    assert_error(embed(client, input="x"), 401, None, "invalid_api_key")
    ok = client.post("/v1/embeddings", json={"input": "x"},
                     headers={"Authorization": "Bearer k1"})
    assert ok.status_code == 200


def test_events_per_request_for_success_and_errors(make_runtime):
    with running_receiver() as sink:
        rt = make_runtime(K_SINK=sink.url)
        client = rt.app.test_client()
        ok = embed(client, input=["a b", "c"])
        bad = embed(client, input=["word " * 600])
        assert sink.wait_requests(2)
        by_id = {e["data"]["request_id"]: e for e in sink.events()}
    first = by_id[ok.headers["X-Request-Id"]]
    assert first["headers"]["ce-type"] == "dev.llmfn.inference.completed.v1"
    assert first["headers"]["ce-source"] == "/llmfn/embed"
    data = first["data"]
    assert data["function"] == "embed" and data["endpoint"] == "/v1/embeddings"
    assert data["api"] == "embeddings"
    assert data["status"] == 200 and data["error_code"] is None
    assert data["input_count"] == 2 and data["prompt_tokens"] == 4 + 3
    assert data["cold_start"] is True and data["duration_s"] > 0
    assert "prompt" not in data and "output" not in data
    assert bad.status_code == 400
    error = next(e["data"] for e in by_id.values() if e["data"]["status"] == 400)
    assert error["error_code"] == "context_length_exceeded" and error["cold_start"] is False
    assert error["input_count"] == 1


def test_request_too_large_has_an_event(make_runtime):
    with running_receiver() as sink:
        rt = make_runtime(K_SINK=sink.url, MAX_REQUEST_BYTES="1000")
        r = rt.app.test_client().post("/v1/embeddings", data=json.dumps({"input": "a " * 600}),
                                      content_type="application/json")
        assert r.status_code == 413
        assert sink.wait_requests(1)
        data = sink.events()[0]["data"]
    assert data["status"] == 413 and data["error_code"] == "request_too_large"
