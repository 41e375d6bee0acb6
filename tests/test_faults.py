"""Faults, each on real processes (generate under gunicorn, as the container runs it).

- A GGUF that matches its sha256 but is not a model: the load fails with a message that says
  so, liveness fails (500/503) with it (the kubelet restarts the pod), readiness says "failed", and
  the log has the line that says why; the process itself stays up (no silent crash loop).
- The weight cache full (a 128 KiB tmpfs) or read-only: the error names MODEL_CACHE_DIR, in
  the probes and in the log. Each runs in its own mount namespace (``unshare -m``), so the
  small or read-only filesystem exists for that process only.
- K_SINK down (connection refused) or slow (never answers within EVENTS_TIMEOUT_S): events are
  retried, then counted as dropped, and inference latency stays within 5 % of a server with
  a healthy sink: medians of >= 30 requests each, interleaved (healthy, down, slow, healthy,
  ...; the order reversed every round) so drift of the machine hits all three alike, all
  three pinned to one core (a generate pod's CPU limit), plus a small absolute floor: 3 ms, or
  twice the standard error of the healthy median when the shared machine is noisier.
- FerretDB down and back: tests/test_audit_reliability.py.
"""
from __future__ import annotations

import hashlib
import os
import re
import statistics
import struct
import time
import uuid

import pytest
import requests

from scripts import procs
from tests.support.eventsink import running_receiver
from tests.support.models import model_file

PROBE_DEADLINE_S = 120.0
LATENCY_REQUESTS = 40  # per sink case (>= 30, the minimum)
LATENCY_RATIO = 1.05
LATENCY_FLOOR_S = 0.003  # absolute slack: timer and scheduling noise of a ~20 ms request


@pytest.fixture(scope="module")
def tiny_model():
    return model_file("tiny-llama.gguf", "make_tiny_model.py")


FAILING = (500, 503)  # a failing probe (func-python answers 500; llmfn's own app 503)


def _wait_probe(server: procs.ServerProcess, path: str, status: tuple[int, ...],
                deadline_s: float = PROBE_DEADLINE_S) -> str:
    """Poll ``path`` until it answers one of ``status``; its body."""
    end = time.monotonic() + deadline_s
    while True:
        got, body = procs.http_status(server.host, server.port, path)
        if got in status:
            return body
        assert server.running, server.log_tail()
        assert time.monotonic() < end, f"{path} still {got} {body!r}:\n{server.log_tail()}"
        time.sleep(0.1)


def _generate(tmp_path, env: dict, *, wrap: list[str] | None = None,
              name: str = "generate") -> procs.ServerProcess:
    port = procs.free_port()
    cmd = procs.gunicorn_cmd("generate", port)
    server = procs.ServerProcess([*(wrap or []), *cmd], port=port, cwd=procs.REPO_ROOT,
                                 log_path=tmp_path / f"{name}.log", name=name,
                                 env={"N_THREADS": "1", "N_CTX": "256",
                                      "OMP_WAIT_POLICY": "passive", "GUNICORN_THREADS": "8",
                                      **env})
    return server.start()


# -- weights that are not a model ---------------------------------------------------------------
def test_gguf_matching_its_sha256_but_not_a_model(tmp_path):
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + struct.pack("<I", 3) + os.urandom(64 * 1024))
    digest = hashlib.sha256(bad.read_bytes()).hexdigest()
    server = _generate(tmp_path, {"MODEL_URI": f"file://{bad}", "MODEL_SHA256": digest,
                                  "MODEL_CACHE_DIR": str(tmp_path / "cache")})
    try:
        liveness = _wait_probe(server, "/health/liveness", FAILING)
        assert f"{bad} is not a valid GGUF model" in liveness, liveness
        assert "llama.cpp could not load it" in liveness
        status, readiness = procs.http_status(server.host, server.port, "/health/readiness")
        assert status in FAILING and "failed:" in readiness and "not a valid GGUF" in readiness
        resp = requests.post(f"{server.url}/v1/completions", json={"prompt": "x"}, timeout=30)
        assert resp.status_code == 503 and "not a valid GGUF" in resp.json()["error"]["message"]
        assert server.running  # up and saying why; the kubelet restarts it on liveness
        log = server.log_tail(20000)
        assert "loading the model failed for good" in log
        assert re.search(r"ModelFileError: the weights file .*broken\.gguf is not a valid "
                         r"GGUF model", log), log
    finally:
        server.stop()


# -- the weight cache full or read-only -------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_in_s3(minio, tiny_model):
    s3 = minio.client()
    bucket = f"faults-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=bucket)
    digest = hashlib.sha256(tiny_model.read_bytes()).hexdigest()
    s3.upload_file(str(tiny_model), bucket, "tiny-llama.gguf",
                   ExtraArgs={"Metadata": {"sha256": digest}})
    return f"s3://{bucket}/tiny-llama.gguf"


# A private mount namespace: the mount is this process tree's only, gone when it exits.
MOUNTS = {
    "full": "mount -t tmpfs -o size=128k tmpfs \"$0\" && exec \"$@\"",
    "read-only": "mount -t tmpfs -o ro tmpfs \"$0\" && exec \"$@\"",
}


@pytest.mark.parametrize("fault, why", [("full", "full"), ("read-only", "read-only")])
def test_model_cache_dir_full_or_read_only_names_the_setting(tmp_path, minio, tiny_in_s3,
                                                             fault, why):
    cache = tmp_path / "cache"
    cache.mkdir()
    server = _generate(tmp_path, {"MODEL_URI": tiny_in_s3, "MODEL_CACHE_DIR": str(cache),
                                  "S3_MAX_ATTEMPTS": "1", **minio.client_env()},
                       wrap=["unshare", "-m", "sh", "-c", MOUNTS[fault], str(cache)])
    try:
        liveness = _wait_probe(server, "/health/liveness", FAILING)
        assert f"MODEL_CACHE_DIR {str(cache)!r}" in liveness, liveness
        assert why in liveness, liveness
        log = server.log_tail(20000)
        assert "loading the model failed for good" in log
        assert f"MODEL_CACHE_DIR {str(cache)!r}" in log
    finally:
        server.stop()
    assert not any(cache.iterdir())  # the fault lived in the namespace only


# -- K_SINK down or slow ----------------------------------------------------------------------
def _metric(server: procs.ServerProcess, name: str, labels: str = "") -> float:
    text = requests.get(f"{server.url}/metrics", timeout=10).text
    m = re.search(rf"^{name}{re.escape(labels)} ([0-9.e+]+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def _wait_metric(server, name, labels, at_least, deadline_s=60.0) -> float:
    end = time.monotonic() + deadline_s
    while True:
        value = _metric(server, name, labels)
        if value >= at_least or time.monotonic() > end:
            return value
        time.sleep(0.2)


def test_k_sink_down_or_slow_drops_events_without_slowing_inference(tmp_path, tiny_model):
    events = {"EVENTS_MAX_ATTEMPTS": "3", "EVENTS_BACKOFF_S": "0.05", "EVENTS_TIMEOUT_S": "0.3",
              "EVENTS_FLUSH_S": "1"}
    base = {"MODEL_URI": f"file://{tiny_model}", **events}
    with running_receiver() as healthy, running_receiver() as slow:
        slow.default = "hang"  # accepts the connection, never answers in time
        down = f"http://127.0.0.1:{procs.free_port()}/"  # nothing listens: refused
        servers = {}
        try:
            for case, sink in (("healthy", healthy.url), ("down", down), ("slow", slow.url)):
                # One core for all three, as a generate pod has (its CPU limit is 1): the
                # event sender competes with inference there, and no server gets a quieter
                # core than another.
                servers[case] = _generate(tmp_path, {**base, "K_SINK": sink,
                                                     "MODEL_CACHE_DIR": str(tmp_path / case)},
                                          name=case, wrap=["taskset", "-c", "0"])
            for s in servers.values():
                s.wait_ready(PROBE_DEADLINE_S)
            sessions = {case: requests.Session() for case in servers}
            body = {"prompt": "The quick brown fox", "max_tokens": 32, "temperature": 0}

            def once(case):
                t0 = time.perf_counter()
                r = sessions[case].post(f"{servers[case].url}/v1/completions", json=body,
                                        timeout=60)
                took = time.perf_counter() - t0
                assert r.status_code == 200, r.text
                assert r.json()["usage"]["completion_tokens"] == 32
                return took

            for _ in range(3):  # warm-up (cold start, first allocations): not measured
                for case in servers:
                    once(case)
            times = {case: [] for case in servers}
            order = list(servers)
            for i in range(LATENCY_REQUESTS):  # interleaved: drift hits every case alike,
                for case in (order if i % 2 == 0 else order[::-1]):  # and each position too
                    times[case].append(once(case))
            medians = {case: statistics.median(t) for case, t in times.items()}
            print(f"\nK_SINK latency medians over {LATENCY_REQUESTS} interleaved requests: "
                  + ", ".join(f"{c} {m * 1000:.2f} ms" for c, m in medians.items())
                  + "; ratios " + ", ".join(f"{c} {medians[c] / medians['healthy']:.3f}"
                                            for c in ("down", "slow")))
            # The floor: LATENCY_FLOOR_S, or twice the standard error of the healthy median
            # (1.2533 x sigma / sqrt(n), sigma from the MAD) when the machine is noisier.
            healthy = times["healthy"]
            mad = statistics.median(abs(t - medians["healthy"]) for t in healthy)
            noise = 2 * 1.2533 * 1.4826 * mad / len(healthy) ** 0.5
            floor = max(LATENCY_FLOOR_S, noise)
            print(f"floor {floor * 1000:.2f} ms (noise {noise * 1000:.2f} ms)")
            for case in ("down", "slow"):
                limit = medians["healthy"] * LATENCY_RATIO + floor
                assert medians[case] <= limit, (case, medians, floor)

            sent = LATENCY_REQUESTS + 3
            assert _wait_metric(servers["healthy"], "llmfn_events_sent_total", "", sent) == sent
            assert _metric(servers["healthy"], "llmfn_events_dropped_total",
                           '{reason="failed"}') == 0
            for case in ("down", "slow"):
                dropped = _wait_metric(servers[case], "llmfn_events_dropped_total",
                                       '{reason="failed"}', 1)
                assert dropped >= 1, servers[case].log_tail()
                retries = _metric(servers[case], "llmfn_events_retries_total")
                assert retries >= 2 * dropped  # 3 attempts each: 2 retries before the drop
                assert _metric(servers[case], "llmfn_events_sent_total") == 0
                assert "not delivered after 3 attempt(s)" in servers[case].log_tail(20000)
        finally:
            for s in servers.values():
                s.stop()
            slow.release.set()
