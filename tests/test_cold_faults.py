"""Cold-start faults on real processes: MinIO down, then back; MinIO slow.

- MinIO down during a cold start: readiness names the reason, the fetch retries with
  backoff, and the function becomes ready when MinIO returns, without a restart (same
  processes) and without liveness failing.
- MinIO slow (scripts/tcp_throttle.py caps each connection's bandwidth): progress in the log
  and in readiness ("downloading N %"), liveness 200 all along, no restart.

Waits have deadlines (they fail a stuck test), never a bound on how fast something is.
"""
from __future__ import annotations

import re
import time

import pytest
import requests

from scripts import procs, services
from scripts.model_files import smollm2_path
from scripts.tcp_throttle import Throttle
from scripts.upload_model import upload

BUCKET = "faults"
KEY = "smollm2-135m-instruct-q4_1.gguf"
DEADLINE_S = 180.0


def poll(what: str, check, deadline_s: float = DEADLINE_S, every_s: float = 0.1):
    """Call ``check()`` until it returns something truthy; that value."""
    end = time.monotonic() + deadline_s
    while True:
        got = check()
        if got:
            return got
        assert time.monotonic() < end, f"gave up waiting for {what}"
        time.sleep(every_s)


def live(server) -> bool:
    return procs.http_status(server.host, server.port, "/health/liveness")[0] == 200


def first_token(server) -> str:
    r = requests.post(f"{server.url}/v1/completions", json={
        "prompt": "The Earth revolves around the", "max_tokens": 2, "temperature": 0},
        timeout=60)
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]["text"]


def start_generate(tmp_path, env: dict) -> procs.ServerProcess:
    return procs.gunicorn_server("generate", procs.free_port(), env={
        "MODEL_CACHE_DIR": str(tmp_path / "cache"), "N_THREADS": "2", "N_CTX": "256",
        "SLOTS": "1", "K_SINK": "", "API_KEYS": "", "LOG_LEVEL": "info", **env},
        log_path=tmp_path / "gunicorn.log").start()


def test_minio_down_then_back_becomes_ready_without_restart(tmp_path):
    """MinIO is stopped before the function starts; readiness names the reason while the
    fetch retries with backoff; MinIO comes back on the same port and the same function
    processes become ready and answer."""
    minio = services.MinioServer(tmp_path / "minio", port=services.free_port())
    services.ensure_binaries()
    with minio:
        digest = upload(minio.client(), str(smollm2_path()), BUCKET, KEY)
    # MinIO is down now (same port and data dir when it comes back).
    env = {**minio.client_env(), "MODEL_URI": f"s3://{BUCKET}/{KEY}", "MODEL_SHA256": digest,
           "S3_MAX_ATTEMPTS": "1", "S3_CONNECT_TIMEOUT_S": "0.5"}
    fn = start_generate(tmp_path, env)
    try:
        fn.wait_listening(DEADLINE_S)
        status, reason = poll("a reason naming S3", lambda: (
            (s := fn.readiness())[0] not in (None, 200) and "waiting for S3" in s[1] and s))
        assert "unreachable" in reason and "retry" in reason
        assert live(fn)
        pids = fn.pids()
        # At least two failed tries, logged, before MinIO returns: the fetch keeps retrying.
        poll("a second retry in the log", lambda: len(re.findall(
            r"fetching the weights failed .*retry \d+ in", fn.log_tail(20000))) >= 2)
        assert live(fn) and fn.readiness()[0] not in (None, 200)
        minio.start().wait_ready(deadline_s=60)
        try:
            fn.wait_ready(DEADLINE_S)
            assert fn.pids() == pids  # the same master and worker: no restart
            assert first_token(fn)  # readiness 200 means loaded: a token, not a 503
        finally:
            minio.stop()
    finally:
        fn.stop()


@pytest.fixture(scope="module")
def uploaded_smol(minio):
    return upload(minio.client(), str(smollm2_path()), BUCKET, KEY)


def test_minio_slow_shows_progress_and_stays_alive(tmp_path, minio, uploaded_smol):
    """Through a proxy capping each connection at 1 MB/s: readiness reports the percentage
    as it grows, the log shows progress, liveness stays 200; uncapped, it becomes ready."""
    with Throttle(("127.0.0.1", minio.port), rate_bps=1e6, latency_s=0.005) as proxy:
        env = {**minio.client_env(), "S3_ENDPOINT_URL": proxy.url,
               "MODEL_URI": f"s3://{BUCKET}/{KEY}", "MODEL_SHA256": uploaded_smol,
               "S3_MAX_CONCURRENCY": "2"}
        fn = start_generate(tmp_path, env)
        try:
            fn.wait_listening(DEADLINE_S)
            pids = fn.pids()
            seen: list[float] = []

            def progress():
                status, text = fn.readiness()
                assert live(fn), "liveness failed during a slow download"
                m = re.match(r"downloading (\d+) %", text)
                if status not in (None, 200) and m:
                    pct = float(m.group(1))
                    if not seen or pct > seen[-1]:
                        seen.append(pct)
                return len(seen) >= 3

            poll("readiness percentages growing", progress, every_s=0.5)
            assert all(0 <= p < 100 for p in seen) and seen == sorted(seen)
            poll("progress in the log", lambda: re.search(
                r"downloading s3://\S+: \d+ % \(\d+/\d+ bytes, [0-9.]+ MB/s\)",
                fn.log_tail(20000)))
            proxy.rate_bps = 0  # the network recovers
            fn.wait_ready(DEADLINE_S)
            assert fn.pids() == pids
            assert first_token(fn)
        finally:
            fn.stop()
