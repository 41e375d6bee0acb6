"""Audit function end to end on a real FerretDB: in-process Flask, gunicorn and func-python.

Every event is delivered twice and out of order; the collection must hold each exactly once.
"""
from __future__ import annotations

import base64
import concurrent.futures as cf
import datetime as dt
import importlib.util
import json
import os
import random
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pymongo
import pytest
import requests
from cloudevents.core.bindings.http import to_binary_event, to_structured_event
from cloudevents.core.v1.event import CloudEvent
from llmfn.events import INFERENCE_COMPLETED

import services

REPO = Path(__file__).resolve().parents[1]
AUDIT_DIR = REPO / "functions" / "audit"
UTC = dt.timezone.utc
READY_DEADLINE_S = 60.0


def load_audit():
    """The audit `function` package under a unique name (each function has a `function`)."""
    name = "audit_function"
    if name not in sys.modules:
        pkg = AUDIT_DIR / "function"
        spec = importlib.util.spec_from_file_location(name, pkg / "__init__.py",
                                                      submodule_search_locations=[str(pkg)])
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        for sub in ("settings", "app", "service", "ingest", "kpis", "store"):
            importlib.import_module(f"{name}.{sub}")
    return sys.modules[name]


def inference_data(i: int, now: dt.datetime, **kw) -> dict:
    d = {"request_id": f"r{i}", "function": "generate" if i % 3 else "embed",
         "model": "tiny" if i % 2 else "mini", "model_sha256": "ab" * 32, "service": "svc",
         "revision": "svc-00001", "endpoint": "/v1/chat/completions",
         "status": 500 if i % 10 == 0 else 200, "error_code": None, "prompt_tokens": 10 + i,
         "completion_tokens": i, "input_count": 1, "ttft_s": 0.01 * i, "duration_s": 0.1 * i,
         "tokens_per_s": 5.0, "finish_reason": "stop", "cold_start": i % 7 == 0,
         "stream": False, "time": (now - dt.timedelta(seconds=i)).isoformat()}
    d.update(kw)
    return d


def make_event(i: int, now: dt.datetime, *, source: str = "/llmfn/generate", **kw) -> CloudEvent:
    return CloudEvent({"type": INFERENCE_COMPLETED, "source": source, "id": f"ev-{i}",
                       "subject": "tiny", "datacontenttype": "application/json"},
                      inference_data(i, now, **kw))


def encode(event: CloudEvent, mode: str) -> tuple[dict, bytes]:
    msg = to_structured_event(event) if mode == "structured" else to_binary_event(event)
    return dict(msg.headers), msg.body


def deliveries(n: int, now: dt.datetime, seed: int = 7) -> list[tuple[int, dict, bytes]]:
    """Every event twice (once binary, once structured), shuffled: at-least-once, reordered."""
    out = []
    for i in range(1, n + 1):
        ev = make_event(i, now)
        out += [(i, *encode(ev, "binary")), (i, *encode(ev, "structured"))]
    random.Random(seed).shuffle(out)
    return out


def unique_db() -> str:
    return f"audit_{uuid.uuid4().hex[:12]}"


def audit_env(uri: str, db: str, **kw) -> dict[str, str]:
    env = dict(os.environ)
    env.update(MONGODB_URI=uri, MONGODB_DATABASE=db, MONGODB_TIMEOUT_MS="1000", **kw)
    return env


class Proc:
    """A server subprocess with a log file, a readiness wait with a deadline and a clean stop."""

    def __init__(self, cmd: list[str], env: dict, cwd: Path, log_path: Path, port: int):
        self.base = f"http://127.0.0.1:{port}"
        self.log_path = log_path
        self._log = open(log_path, "wb")
        self.proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=self._log,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def wait_ready(self, deadline_s: float = READY_DEADLINE_S) -> "Proc":
        end = time.monotonic() + deadline_s
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise AssertionError(f"exited {self.proc.returncode}:\n{self.log()}")
            try:
                if requests.get(self.base + "/health/readiness", timeout=2).status_code == 200:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.1)
        raise AssertionError(f"not ready after {deadline_s}s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)
        self._log.close()


def start_gunicorn(tmp_path: Path, env: dict) -> Proc:
    port = services.free_port()
    env = {**env, "BIND": f"127.0.0.1:{port}", "GUNICORN_THREADS": "8"}
    cmd = [sys.executable, "-m", "gunicorn", "-c", str(REPO / "llmfn/src/llmfn/gunicorn_conf.py"),
           "--chdir", str(AUDIT_DIR), "function.wsgi:app", "--bind", f"127.0.0.1:{port}"]
    return Proc(cmd, env, REPO, tmp_path / "gunicorn.log", port).wait_ready()


def start_func_python(tmp_path: Path, env: dict) -> Proc:
    port = services.free_port()
    env = {**env, "LISTEN_ADDRESS": f"127.0.0.1:{port}"}
    cmd = [sys.executable, "-c",
           "from func_python.cloudevent import serve\nfrom function import new\nserve(new)"]
    return Proc(cmd, env, AUDIT_DIR, tmp_path / "func.log", port).wait_ready()


def count(uri: str, db: str, collection: str = "inference_events") -> int:
    with pymongo.MongoClient(uri, serverSelectionTimeoutMS=5000) as client:
        return client[db][collection].count_documents({})


def expected_total(n: int, now: dt.datetime) -> dict:
    data = [inference_data(i, now) for i in range(1, n + 1)]
    lat = sorted(d["duration_s"] for d in data)
    return {"count": n, "errors": sum(d["status"] >= 500 for d in data),
            "completion_tokens": sum(d["completion_tokens"] for d in data),
            "prompt_tokens": sum(d["prompt_tokens"] for d in data),
            "p50": lat[(n + 1) // 2 - 1], "cold": sum(d["cold_start"] for d in data)}


# -- in-process Flask app on the real FerretDB ---------------------------------------------

@pytest.fixture()
def app_db(ferretdb):
    audit = load_audit()
    db = unique_db()
    settings = audit.settings.AuditSettings.from_mapping(
        {"MONGODB_URI": ferretdb.uri, "MONGODB_DATABASE": db, "MAX_REQUEST_BYTES": "65536"})
    app = audit.app.create_app(settings)
    yield app.test_client(), db
    app.extensions["audit.service"].stop()


def test_twice_and_out_of_order_is_exactly_once(app_db, ferretdb):
    client, db = app_db
    now = dt.datetime.now(UTC)
    n = 40
    statuses = []
    for _i, headers, body in deliveries(n, now):
        r = client.post("/", headers=headers, data=body)
        assert r.status_code == 200, r.json
        statuses.append(r.json["status"])
    assert statuses.count("recorded") == n and statuses.count("duplicate") == n
    assert count(ferretdb.uri, db) == n
    with pymongo.MongoClient(ferretdb.uri) as c:
        ids = {d["_id"] for d in c[db].inference_events.find({}, {"_id": 1})}
    assert ids == {f"/llmfn/generate\x1fev-{i}" for i in range(1, n + 1)}

    kpis = client.get("/kpis").json
    exp = expected_total(n, now)
    total = kpis["total"]
    assert (total["count"], total["errors"]) == (exp["count"], exp["errors"])
    assert total["completion_tokens"] == exp["completion_tokens"]
    assert total["prompt_tokens"] == exp["prompt_tokens"]
    assert total["latency_s"]["p50"] == pytest.approx(exp["p50"], rel=0.045)  # log buckets
    assert total["cold_starts"]["count"] == exp["cold"]
    assert total["error_rate"] == pytest.approx(exp["errors"] / n)
    assert {(g["function"], g["model"]) for g in kpis["groups"]} == {
        ("generate", "tiny"), ("generate", "mini"), ("embed", "tiny"), ("embed", "mini")}
    assert sum(g["count"] for g in kpis["groups"]) == n
    metrics = client.get("/metrics").data.decode()
    assert f"audit_events_recorded_total {float(n)}" in metrics
    assert f"audit_events_duplicate_total {float(n)}" in metrics


def test_kpi_filters_and_timeseries(app_db):
    client, _db = app_db
    now = dt.datetime.now(UTC).replace(microsecond=0)
    for i in range(1, 31):
        headers, body = encode(make_event(i, now), "binary")
        assert client.post("/", headers=headers, data=body).status_code == 200
    since = now - dt.timedelta(seconds=10)
    until = str(now.timestamp() + 1)  # epoch seconds work too
    window = client.get(f"/kpis?since={since.isoformat()}&until={until}").json
    # minute cells overlapping the window count whole; the answer says which interval
    first_minute = since.timestamp() // 60 * 60
    assert window["total"]["count"] == sum(1 for i in range(1, 31)
                                           if (now.timestamp() - i) >= first_minute)
    assert window["window"]["since"] == dt.datetime.fromtimestamp(
        first_minute, UTC).isoformat().replace("+00:00", "Z")
    gen = client.get("/kpis?function=generate&model=tiny&service=svc").json
    assert [(g["function"], g["model"]) for g in gen["groups"]] == [("generate", "tiny")]
    assert client.get("/kpis?service=other").json["total"]["count"] == 0
    since = (now - dt.timedelta(minutes=5)).isoformat()
    ts = client.get(f"/kpis/timeseries?bucket=1m&since={since}&until={until}").json
    assert ts["bucket_s"] == 60 and sum(b["count"] for b in ts["series"]) == 30
    assert sum(b["completion_tokens"] for b in ts["series"]) == sum(range(1, 31))
    assert sum(b["errors"] for b in ts["series"]) == 3
    assert client.get("/kpis/timeseries?bucket=1s&since=0").status_code == 400


def test_dead_letter_sink_keeps_everything_once(app_db, ferretdb):
    client, db = app_db
    now = dt.datetime.now(UTC)
    bad = CloudEvent({"type": INFERENCE_COMPLETED, "source": "/llmfn/embed", "id": "dl-1",
                      "datacontenttype": "application/json",
                      "knativeerrorcode": "400", "knativeerrordest": "http://audit.default/",
                      "knativeerrordata": base64.b64encode(b'{"error": "bad"}').decode()},
                     {"model": "m", "not": "an inference record"})
    good = make_event(1, now)
    for ev in (bad, good, bad):
        headers, body = encode(ev, "binary")
        r = client.post("/dead-letter", headers=headers, data=body)
        assert r.status_code == 200
    assert r.json["status"] == "duplicate"
    with pymongo.MongoClient(ferretdb.uri) as c:
        docs = {d["ce"]["id"]: d for d in c[db].dead_letters.find({})}
        assert c[db].inference_events.count_documents({}) == 0
    assert set(docs) == {"dl-1", "ev-1"}
    dl = docs["dl-1"]
    assert dl["dead_letter"] is True and dl["valid"] is False and dl["problems"]
    assert dl["data"] == {"model": "m", "not": "an inference record"}
    assert (dl["knativeerrorcode"], dl["knativeerrordest"]) == ("400", "http://audit.default/")
    assert dl["knativeerrordata_text"] == '{"error": "bad"}'
    assert docs["ev-1"]["valid"] is True


def test_bad_input_is_400_or_413_never_5xx(app_db):
    client, _db = app_db
    now = dt.datetime.now(UTC)
    headers, body = encode(make_event(1, now), "binary")
    no_id = {k: v for k, v in headers.items() if k != "ce-id"}
    cases = [
        ({"content-type": "text/plain"}, b"not an event", 400),
        ({"content-type": "application/cloudevents+json"}, b"{broken", 400),
        ({"content-type": "application/cloudevents+json"}, b"[]", 400),
        (no_id, body, 400),
        ({**headers, "ce-type": "com.example.other"}, body, 400),
        ({**headers, "ce-specversion": "0.1"}, body, 400),
        ({**headers, "content-type": "application/xml"}, b"<a/>", 400),
        (headers, json.dumps(inference_data(1, now, duration_s="slow")).encode(), 400),
        (headers, json.dumps(inference_data(1, now, time="yesterday")).encode(), 400),
        (headers, json.dumps(inference_data(1, now, prompt_tokens=2 ** 70)).encode(), 400),
        (headers, json.dumps(inference_data(1, now, extra={"a.b": 1})).encode(), 400),
        (headers, b"x" * 70000, 413),
    ]
    for h, b, want in cases:
        r = client.post("/", headers=h, data=b)
        assert r.status_code == want, (h, b[:80], r.data)
        assert r.json["error"]["code"] in ("invalid_event", "request_too_large")
    extra = json.dumps(inference_data(2, now, extra_field={"nested": [1, 2]})).encode()
    r = client.post("/", headers={**headers, "ce-id": "extra"}, data=extra)
    assert r.status_code == 200 and r.json["status"] == "recorded"


# -- the two serving paths as real processes ------------------------------------------------

def _send_all(base: str, items, workers: int = 8) -> list[requests.Response]:
    with requests.Session() as s, cf.ThreadPoolExecutor(workers) as pool:
        return list(pool.map(lambda it: s.post(base + "/", headers=it[1], data=it[2],
                                               timeout=30), items))


def test_gunicorn_path(ferretdb, tmp_path):
    db = unique_db()
    proc = start_gunicorn(tmp_path, audit_env(ferretdb.uri, db))
    try:
        now = dt.datetime.now(UTC)
        responses = _send_all(proc.base, deliveries(30, now, seed=11))
        assert [r.status_code for r in responses] == [200] * 60
        assert count(ferretdb.uri, db) == 30
        r = requests.get(proc.base + "/kpis", timeout=30)
        assert r.status_code == 200 and r.json()["total"]["count"] == 30
        assert requests.get(proc.base + "/kpis/timeseries?bucket=5m", timeout=30).ok
        assert "audit_events_recorded_total 30.0" in requests.get(proc.base + "/metrics",
                                                                  timeout=10).text
        assert requests.post(proc.base + "/", data=b"x" * (2 << 20),
                             headers={"content-type": "application/json"},
                             timeout=30).status_code == 413
    finally:
        proc.stop()


QUERY_CE = {"ce-specversion": "1.0", "ce-id": "q", "ce-source": "/cli",
            "ce-type": "dev.llmfn.audit.query.v1"}


def test_func_python_path(ferretdb, tmp_path):
    db = unique_db()
    proc = start_func_python(tmp_path, audit_env(ferretdb.uri, db, MAX_REQUEST_BYTES="65536"))
    try:
        now = dt.datetime.now(UTC)
        responses = _send_all(proc.base, deliveries(20, now, seed=5), workers=4)
        assert [r.status_code for r in responses] == [200] * 40
        assert sorted(r.json()["status"] for r in responses) == ["duplicate"] * 20 + \
            ["recorded"] * 20
        assert count(ferretdb.uri, db) == 20
        # func-python answers a request it cannot decode as a CloudEvent itself (400), so a
        # plain GET /kpis does not reach the function; with ce-* headers it does.
        assert requests.get(proc.base + "/kpis", timeout=30).status_code == 400
        r = requests.get(proc.base + "/kpis", headers=QUERY_CE, timeout=30)
        assert r.status_code == 200 and r.json()["total"]["count"] == 20
        r = requests.get(proc.base + "/kpis/timeseries?bucket=1h", headers=QUERY_CE, timeout=30)
        assert r.status_code == 200 and sum(b["count"] for b in r.json()["series"]) == 20
        assert "audit_events_duplicate_total 20.0" in requests.get(
            proc.base + "/metrics", headers=QUERY_CE, timeout=10).text
        headers, body = encode(make_event(99, now), "binary")
        bad = [({**headers, "ce-source": ""}, body, 400),  # rejected by the middleware
               ({k: v for k, v in headers.items() if k != "ce-id"}, body, 400),
               ({**headers, "ce-type": "com.example.other"}, body, 400),
               (headers, json.dumps({"model": 1}).encode(), 400),
               (headers, b"x" * 70000, 413)]
        for h, b, want in bad:
            assert requests.post(proc.base + "/", headers=h, data=b, timeout=30).status_code \
                == want, h
        r = requests.post(proc.base + "/dead-letter", headers={**headers,
                          "ce-knativeerrorcode": "503"}, data=body, timeout=30)
        assert r.status_code == 200 and count(ferretdb.uri, db, "dead_letters") == 1
    finally:
        proc.stop()
