"""Audit when the database goes away and comes back (its own FerretDB: the shared one stays up).

While FerretDB is down every event gets 503 with Retry-After (the broker retries it) and
readiness does not flap; once it is back, the re-sent events are all recorded exactly once.
"""
from __future__ import annotations

import datetime as dt
import re
import time

import pytest
import requests

from scripts import services
from tests.support.audit import audit_env, count, encode, make_event, start_gunicorn, unique_db
from tests.support.stack import started

RESEND_DEADLINE_S = 60.0


@pytest.fixture()
def own_ferretdb(tmp_path):
    """A FerretDB of this test's own: the test stops and restarts it."""
    yield from started(services.FerretDBServer(tmp_path / "fdb", port=services.free_port()))


def _post(base: str, event, mode: str = "binary") -> requests.Response:
    headers, body = encode(event, mode)
    return requests.post(base + "/", headers=headers, data=body, timeout=60)


def test_database_outage_then_recovery(own_ferretdb, tmp_path):
    db = unique_db()
    proc = start_gunicorn(tmp_path, audit_env(own_ferretdb.uri, db, RETRY_AFTER_S="2"))
    try:
        now = dt.datetime.now(dt.UTC)
        first = [make_event(i, now) for i in range(1, 11)]
        second = [make_event(i, now) for i in range(11, 21)]
        assert all(_post(proc.url, ev).status_code == 200 for ev in first)

        own_ferretdb.stop()
        for ev in second:
            r = _post(proc.url, ev, "structured")
            assert r.status_code == 503, r.text
            assert r.headers["Retry-After"] == "2"
            assert r.json()["error"]["code"] == "database_unavailable"
        assert requests.get(proc.url + "/kpis", timeout=60).status_code == 503
        assert requests.get(proc.url + "/health/readiness", timeout=10).status_code == 200
        assert requests.get(proc.url + "/health/liveness", timeout=10).status_code == 200

        own_ferretdb.start().wait_ready(deadline_s=60)
        # The broker re-sends what got 503 (and, at least once, may re-send the rest too).
        pending = second + first
        results: dict[str, str] = {}
        for ev in pending:
            end = time.monotonic() + RESEND_DEADLINE_S
            while True:
                r = _post(proc.url, ev)
                if r.status_code != 503 or time.monotonic() > end:
                    break
                time.sleep(0.2)  # the broker's backoff, bounded by the deadline
            assert r.status_code == 200, r.text
            results[ev.get_id()] = r.json()["status"]
        assert [results[e.get_id()] for e in second] == ["recorded"] * 10
        assert [results[e.get_id()] for e in first] == ["duplicate"] * 10
        assert count(own_ferretdb.uri, db) == 20
        metrics = requests.get(proc.url + "/metrics", timeout=10).text
        errors = re.search(r'audit_db_errors_total\{op="insert"\} ([0-9.]+)', metrics)
        assert errors and float(errors.group(1)) >= 10
    finally:
        proc.stop()
