"""Service and adapters without a database: a closed port stands for a database that is down."""
import asyncio
import json
import socket
import threading

from cloudevents.core.v1.event import CloudEvent
from llmfn.events import INFERENCE_COMPLETED

from audit_function import new
from audit_function.app import create_app
from audit_function.service import AuditService
from audit_function.settings import AuditSettings

from test_audit_ingest import data  # noqa: E402


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def settings(**kw):
    env = {"MONGODB_URI": f"mongodb://127.0.0.1:{closed_port()}/", "MONGODB_TIMEOUT_MS": "100",
           "MAX_REQUEST_BYTES": "4096", "RETRY_AFTER_S": "3"}
    env.update(kw)
    return AuditSettings.from_mapping(env)


def headers(**kw):
    h = {"ce-specversion": "1.0", "ce-type": INFERENCE_COMPLETED, "ce-source": "/llmfn/generate",
         "ce-id": "r1", "content-type": "application/json"}
    h.update(kw)
    return h


def test_flask_database_down_is_503_with_retry_after():
    client = create_app(settings()).test_client()
    r = client.post("/", headers=headers(), data=json.dumps(data()))
    assert r.status_code == 503 and r.headers["Retry-After"] == "3"
    assert r.json["error"]["code"] == "database_unavailable"
    assert client.get("/health/liveness").status_code == 200
    assert client.get("/health/readiness").status_code == 503
    assert client.get("/kpis").status_code == 503
    assert b"audit_db_errors_total" in client.get("/metrics").data


def test_flask_rejections_do_not_need_the_database():
    client = create_app(settings()).test_client()
    assert client.post("/", headers=headers(), data="x" * 5000).status_code == 413
    r = client.post("/", headers={"content-type": "text/plain"}, data="hi")
    assert r.status_code == 400 and r.json["error"]["code"] == "invalid_event"
    r = client.post("/", headers=headers(), data=json.dumps({"model": "m"}))
    assert r.status_code == 400 and "duration_s is missing" in r.json["error"]["message"]
    r = client.post("/", headers=headers(**{"content-type": "text/plain"}), data="hello")
    assert r.status_code == 400 and "datacontenttype" in r.json["error"]["message"]
    assert client.get("/kpis?since=garbage").status_code == 400
    assert client.get("/kpis/timeseries?bucket=1s&since=0").status_code == 400
    assert client.get("/nope").status_code == 404
    metrics = client.get("/metrics").data.decode()
    assert 'audit_events_invalid_total{reason="data"} 2.0' in metrics
    assert "audit_requests_too_large_total 1.0" in metrics


def _asgi(fn, method, path, event=None, query=b"", body_len=None):
    scope = {"type": "http", "method": method, "path": path, "query_string": query,
             "headers": [] if body_len is None else [(b"content-length", str(body_len).encode())]}
    if event is not None:
        scope["event"] = event
    sent = []

    async def send(msg):
        sent.append(msg)

    asyncio.run(fn.handle(scope, None, send))
    return sent[0]["status"], dict(sent[0]["headers"]), sent[1]["body"]


def test_func_contract_routes_by_method_and_path():
    fn = new()
    assert fn.ready() == (False, "not started")
    fn.start({"MONGODB_URI": f"mongodb://127.0.0.1:{closed_port()}/",
              "MONGODB_TIMEOUT_MS": "100", "MAX_REQUEST_BYTES": "100"})
    try:
        assert fn.alive() == (True, "OK") and fn.ready()[0] is False
        ev = CloudEvent({"type": INFERENCE_COMPLETED, "source": "/s", "id": "1",
                         "datacontenttype": "application/json"}, data())
        status, hdrs, _ = _asgi(fn, "POST", "/", ev)
        assert status == 503 and hdrs[b"retry-after"] == b"2"
        assert _asgi(fn, "POST", "/", ev, body_len=101)[0] == 413
        assert _asgi(fn, "GET", "/kpis", ev, query=b"since=bad")[0] == 400
        assert _asgi(fn, "GET", "/metrics", ev)[0] == 200
        assert _asgi(fn, "PUT", "/", ev)[0] == 405
        assert _asgi(fn, "POST", "/elsewhere", ev)[0] == 404
    finally:
        fn.stop()


def test_service_start_and_stop_are_idempotent():
    """A second start adds no background thread; a second stop is a no-op, not an error."""
    def store_threads():
        return [t for t in threading.enumerate() if t.name == "audit-store" and t.is_alive()]

    before = len(store_threads())
    svc = AuditService(settings())
    svc.start()
    svc.start()
    assert len(store_threads()) - before <= 1  # it may have connected and ended already
    assert svc._thread is not None
    svc.stop()
    svc.stop()
    assert svc._thread is None and len(store_threads()) <= before
