"""Audit function end to end on a real FerretDB: in-process Flask, gunicorn and func-python.

Every event is delivered twice and out of order; the collection must hold each exactly once.
"""
from __future__ import annotations

import base64
import concurrent.futures as cf
import datetime as dt
import json
from collections import Counter

import pymongo
import pytest
import requests
from cloudevents.core.v1.event import CloudEvent

from llmfn.events import INFERENCE_COMPLETED
from tests.support.audit import (
    audit_env,
    count,
    deliveries,
    encode,
    inference_data,
    load_audit,
    make_event,
    start_func_python,
    start_gunicorn,
    unique_db,
)

UTC = dt.UTC


def label_counts(data: list[dict]) -> dict:
    """`finish_reasons` and `output_formats` as /kpis should count them: null finish reason
    as "none", a missing output format (an older producer) as "text"."""
    return {"finish_reasons": dict(Counter(d["finish_reason"] or "none" for d in data)),
            "output_formats": dict(Counter(d.get("output_format", "text") for d in data))}


def expected_total(n: int, now: dt.datetime) -> dict:
    data = [inference_data(i, now) for i in range(1, n + 1)]
    lat = sorted(d["duration_s"] for d in data)
    return {"count": n, "errors": sum(d["status"] >= 500 for d in data),
            "completion_tokens": sum(d["completion_tokens"] for d in data),
            "prompt_tokens": sum(d["prompt_tokens"] for d in data),
            "p50": lat[(n + 1) // 2 - 1], "cold": sum(d["cold_start"] for d in data),
            **label_counts(data)}


def expected_groups(n: int, now: dt.datetime) -> dict:
    """(function, model) -> the label counts of its events."""
    groups: dict = {}
    for i in range(1, n + 1):
        d = inference_data(i, now)
        groups.setdefault((d["function"], d["model"]), []).append(d)
    return {k: label_counts(v) for k, v in groups.items()}


# -- in-process Flask app on the real FerretDB ---------------------------------------------

@pytest.fixture()
def app_db(ferretdb):
    db = unique_db()
    runtime = load_audit().func.create_runtime(
        {"MONGODB_URI": ferretdb.uri, "MONGODB_DATABASE": db, "MAX_REQUEST_BYTES": "65536"})
    runtime.start()
    yield runtime.app.test_client(), db
    runtime.stop()


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
    assert total["finish_reasons"] == exp["finish_reasons"]
    assert total["output_formats"] == exp["output_formats"]
    # the inputs have every kind: the counts are not trivially "stop" and "text"
    assert {"stop", "length", "tool_calls", "error", "none"} <= exp["finish_reasons"].keys()
    assert {"text", "json_schema", "json_object", "tool_call"} <= exp["output_formats"].keys()
    assert {(g["function"], g["model"]) for g in kpis["groups"]} == {
        ("generate", "tiny"), ("generate", "mini"), ("embed", "tiny"), ("embed", "mini")}
    assert sum(g["count"] for g in kpis["groups"]) == n
    assert {(g["function"], g["model"]): {k: g[k] for k in ("finish_reasons", "output_formats")}
            for g in kpis["groups"]} == expected_groups(n, now)
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
    reasons: Counter = Counter()
    for b in ts["series"]:
        reasons.update(b["finish_reasons"])
    assert reasons == Counter(label_counts([inference_data(i, now)
                                            for i in range(1, 31)])["finish_reasons"])
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
        responses = _send_all(proc.url, deliveries(30, now, seed=11))
        assert [r.status_code for r in responses] == [200] * 60
        assert count(ferretdb.uri, db) == 30
        r = requests.get(proc.url + "/kpis", timeout=30)
        assert r.status_code == 200 and r.json()["total"]["count"] == 30
        assert requests.get(proc.url + "/kpis/timeseries?bucket=5m", timeout=30).ok
        assert "audit_events_recorded_total 30.0" in requests.get(proc.url + "/metrics",
                                                                  timeout=10).text
        assert requests.post(proc.url + "/", data=b"x" * (2 << 20),
                             headers={"content-type": "application/json"},
                             timeout=30).status_code == 413
    finally:
        proc.stop()


def test_func_python_path(ferretdb, tmp_path):
    db = unique_db()
    proc = start_func_python(tmp_path, audit_env(ferretdb.uri, db, MAX_REQUEST_BYTES="65536"))
    try:
        now = dt.datetime.now(UTC)
        responses = _send_all(proc.url, deliveries(20, now, seed=5), workers=4)
        assert [r.status_code for r in responses] == [200] * 40
        assert sorted(r.json()["status"] for r in responses) == ["duplicate"] * 20 + \
            ["recorded"] * 20
        assert count(ferretdb.uri, db) == 20
        # `invoke: http`: plain GETs reach the function, no ce-* headers needed
        r = requests.get(proc.url + "/kpis", timeout=30)
        assert r.status_code == 200 and r.json()["total"]["count"] == 20
        r = requests.get(proc.url + "/kpis/timeseries?bucket=1h", timeout=30)
        assert r.status_code == 200 and sum(b["count"] for b in r.json()["series"]) == 20
        assert "audit_events_duplicate_total 20.0" in requests.get(
            proc.url + "/metrics", timeout=10).text
        headers, body = encode(make_event(99, now), "binary")
        bad = [({**headers, "ce-source": ""}, body, 400),
               ({k: v for k, v in headers.items() if k != "ce-id"}, body, 400),
               ({**headers, "ce-type": "com.example.other"}, body, 400),
               (headers, json.dumps({"model": 1}).encode(), 400),
               (headers, b"x" * 70000, 413)]
        for h, b, want in bad:
            assert requests.post(proc.url + "/", headers=h, data=b, timeout=30).status_code \
                == want, h
        r = requests.post(proc.url + "/dead-letter", headers={**headers,
                          "ce-knativeerrorcode": "503"}, data=body, timeout=30)
        assert r.status_code == 200 and count(ferretdb.uri, db, "dead_letters") == 1
    finally:
        proc.stop()
