"""`make run KNATIVE=1` (scripts/run.py): every function behind its own queue-proxy on the
usual local ports. The runner is started as `make run` starts it (free ports, so a developer's
own `make run` is left alone); a chat completion and an embedding go through the queue-proxies,
their inference events reach audit through its own, and audit's /kpis (read through it) counts
them; the queue-proxies answer the activator's probe on the usual port themselves; Ctrl-C
stops everything and leaves no network namespace behind.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import requests

from scripts import knative_pod, procs
from tests.support.calls import ANSWER, chat

ROOT = Path(__file__).resolve().parents[1]
START_S = 300
EVENTS_S = 60
STOP_S = 120


def test_make_run_knative_serves_through_queue_proxy(tmp_path):
    ports = {k: procs.free_port() for k in ("MINIO_PORT", "FERRETDB_PORT", "BROKER_PORT",
                                            "GENERATE_PORT", "EMBED_PORT", "AUDIT_PORT")}
    env = {**os.environ, **{k: str(v) for k, v in ports.items()}, "KNATIVE": "1",
           "PYTHONUNBUFFERED": "1"}
    log = tmp_path / "run.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "scripts/run.py"], cwd=ROOT, env=env,
                                stdout=out, stderr=subprocess.STDOUT)
    try:
        end = time.monotonic() + START_S
        while "llmfn is running" not in log.read_text() and time.monotonic() < end:
            assert proc.poll() is None, log.read_text()
            time.sleep(0.5)
        text = log.read_text()
        assert "llmfn is running" in text, text
        netns = re.findall(r"netns (llmfn-qp-\S+)\)", text)
        assert len(netns) == 3, text  # one pod namespace per function

        audit = f"http://127.0.0.1:{ports['AUDIT_PORT']}"
        before = _counts(audit)
        gen = f"http://127.0.0.1:{ports['GENERATE_PORT']}"
        r = chat(gen)
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["message"]["content"].startswith(ANSWER.expected)
        emb = requests.post(f"http://127.0.0.1:{ports['EMBED_PORT']}/v1/embeddings",
                            json={"input": "hello"}, timeout=60)
        assert emb.status_code == 200 and len(emb.json()["data"][0]["embedding"]) == 384
        # both inference events reach audit through its queue-proxy (the broker delivers to
        # AUDIT_PORT), and /kpis, read through it too, counts them
        end = time.monotonic() + EVENTS_S
        while True:
            after = _counts(audit)
            grown = {f: after.get(f, 0) - before.get(f, 0) for f in ("generate", "embed")}
            if grown == {"generate": 1, "embed": 1} or time.monotonic() > end:
                break
            time.sleep(0.5)
        assert grown == {"generate": 1, "embed": 1}, (before, after)
        for name in ("GENERATE_PORT", "EMBED_PORT", "AUDIT_PORT"):
            probe = requests.get(f"http://127.0.0.1:{ports[name]}/",
                                 headers=knative_pod.PROBE_HEADERS, timeout=15)
            assert (probe.status_code, probe.text) == (200, "queue"), name  # queue-proxy's own
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(STOP_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
    assert proc.returncode == 0, log.read_text()[-3000:]
    left = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert not [n for n in netns if n in left], left


def _counts(audit: str) -> dict[str, int]:
    """Inference events per function, as audit's GET /kpis counts them."""
    r = requests.get(f"{audit}/kpis", timeout=30)
    assert r.status_code == 200, r.text
    counts: dict[str, int] = {}
    for g in r.json()["groups"]:
        counts[g["function"]] = counts.get(g["function"], 0) + g["count"]
    return counts
