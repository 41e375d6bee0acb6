"""audit without a database: a closed port stands for a database that is down.

The app is driven through Flask's test client and through func-python's own ASGI application
(`func_python.http`, as `func deploy` serves `invoke: http`) on Hypercorn.
"""
import datetime as dt
import json
import socket
import threading

import httpx
import pytest
from audit_function import new
from audit_function.func import create_runtime
from audit_function.service import AuditService
from audit_function.settings import AuditSettings
from func_python.http import ASGIApplication

from llmfn.events import INFERENCE_COMPLETED
from scripts.hypercorn_thread import hypercorn_server
from tests.support.audit import encode, inference_data, make_event

NOW = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env(**kw) -> dict[str, str]:
    cfg = {"MONGODB_URI": f"mongodb://127.0.0.1:{closed_port()}/", "MONGODB_TIMEOUT_MS": "100",
           "MAX_REQUEST_BYTES": "4096", "RETRY_AFTER_S": "3",
           "SHUTDOWN_MIN_S": "0"}  # in-process: nothing polls readiness
    cfg.update(kw)
    return cfg


def headers(**kw):
    h = {"ce-specversion": "1.0", "ce-type": INFERENCE_COMPLETED, "ce-source": "/llmfn/generate",
         "ce-id": "r1", "content-type": "application/json"}
    h.update(kw)
    return h


@pytest.fixture
def client():
    rt = create_runtime(env())
    rt.start()
    yield rt.app.test_client()
    rt.stop()


def test_database_down_is_503_with_retry_after(client):
    r = client.post("/", headers=headers(), data=json.dumps(inference_data(1, NOW)))
    assert r.status_code == 503 and r.headers["Retry-After"] == "3"
    assert r.json["error"] == {"message": "The event store is unavailable; retry.",
                               "type": "service_unavailable", "param": None,
                               "code": "database_unavailable"}
    assert client.get("/health/liveness").status_code == 200
    r = client.get("/health/readiness")
    assert r.status_code == 503 and r.text == "waiting for the database"
    r = client.get("/kpis")
    assert r.status_code == 503 and r.headers["Retry-After"] == "3"
    assert 'audit_db_errors_total{op="commit"} 1.0' in client.get("/metrics").text


def test_rejections_do_not_need_the_database(client):
    assert client.post("/", headers=headers(), data="x" * 5000).status_code == 413
    r = client.post("/", headers={"content-type": "text/plain"}, data="hi")
    assert r.status_code == 400 and r.json["error"]["code"] == "invalid_event"
    r = client.post("/", headers=headers(), data=json.dumps({"model": "m"}))
    assert r.status_code == 400 and "duration_s is missing" in r.json["error"]["message"]
    r = client.post("/", headers=headers(**{"content-type": "text/plain"}), data="hello")
    assert r.status_code == 400 and "datacontenttype" in r.json["error"]["message"]
    r = client.post("/", headers=headers(), data='{"model": "\\ud800"}')  # no UTF-8 form
    assert r.status_code == 400 and r.json["error"]["code"] == "invalid_event"
    r = client.post("/dead-letter", headers={"content-type": "application/cloudevents+json"},
                    data='{"specversion": "1.0", "id": "\\ud800", "type": "t", "source": "/s"}')
    assert r.status_code == 400 and "lone surrogate" in r.json["error"]["message"]
    r = client.post("/", headers={"content-type": "application/cloudevents-batch+json"},
                    data="[]")
    assert r.status_code == 400 and "batch mode" in r.json["error"]["message"]
    r = client.get("/kpis?since=garbage")
    assert r.status_code == 400 and r.json["error"]["code"] == "invalid_query"
    assert client.get("/kpis/timeseries?bucket=1s&since=0").status_code == 400
    r = client.get("/nope")
    assert r.status_code == 404 and r.json["error"]["code"] == "not_found"
    assert client.put("/").status_code == 405
    metrics = client.get("/metrics").text
    assert 'audit_events_invalid_total{reason="data"} 3.0' in metrics
    assert 'audit_events_invalid_total{reason="decode"} 3.0' in metrics
    assert 'llmfn_requests_total{route="/",status="413"} 1.0' in metrics


def test_api_keys_guard_kpis_but_not_events():
    """The Broker sends no bearer key: event routes stay open when API_KEYS is set."""
    rt = create_runtime(env(API_KEYS="k1"))
    client = rt.app.test_client()
    try:
        assert client.get("/kpis").status_code == 401
        assert client.get("/kpis?since=bad", headers={"Authorization": "Bearer k1"}
                          ).status_code == 400
        assert client.post("/", headers={"content-type": "text/plain"}, data="x"
                           ).status_code == 400
        assert client.post("/dead-letter", headers={"content-type": "text/plain"}, data="x"
                           ).status_code == 400
        assert client.get("/health/liveness").status_code == 200
        assert client.get("/metrics").status_code == 200
    finally:
        rt.stop()


def test_func_python_serves_plain_gets_and_events():
    """As `func deploy` serves `invoke: http`: func-python's ASGI app around `new()`."""
    app = ASGIApplication(new())
    with hypercorn_server(app) as url, httpx.Client(base_url=url, timeout=30) as c:
        assert c.get("/health/liveness").text == "OK"
        r = c.get("/health/readiness")
        assert r.status_code == 500 and r.text == "waiting for the database"
        r = c.get("/kpis")  # no ce-* headers: reaches the function
        assert r.status_code == 503 and r.headers["retry-after"] == "2"
        assert r.json()["error"]["code"] == "database_unavailable"
        assert c.get("/kpis?since=bad").json()["error"]["code"] == "invalid_query"
        for mode in ("binary", "structured"):
            h, body = encode(make_event(1, NOW), mode)
            r = c.post("/", headers=h, content=body)
            assert r.status_code == 503 and r.headers["retry-after"] == "2", mode
        h, body = encode(make_event(1, NOW), "binary")
        r = c.post("/", headers={**h, "ce-type": "com.example.other"}, content=body)
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_event"
        r = c.post("/", headers=h, content=b"x" * (2 << 20))
        assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
        assert c.put("/").status_code == 405
        metrics = c.get("/metrics").text
        assert 'llmfn_requests_total{route="bridge",status="413"} 1.0' in metrics
        assert 'audit_db_errors_total{op="query"} 1.0' in metrics


def test_service_start_and_stop_are_idempotent():
    """A second start adds no background thread; a second stop is a no-op, not an error."""
    def store_threads():
        return [t for t in threading.enumerate() if t.name == "audit-store" and t.is_alive()]

    before = len(store_threads())
    svc = AuditService(AuditSettings.from_mapping(env()))
    svc.start()
    svc.start()
    assert len(store_threads()) - before <= 1  # it may have connected and ended already
    assert svc._thread is not None
    svc.stop()
    svc.stop()
    assert svc._thread is None and len(store_threads()) <= before
